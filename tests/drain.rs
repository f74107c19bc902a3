//! cachet as a sidecar going away: on SIGTERM `/readyz` turns 503 at once while old
//! and new clients are still served for `[listen] drain_delay`, then a graceful
//! shutdown; SIGINT stops at once; SIGHUP reloads (docs/configuration.md, "Command
//! line").

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::http;
use support::process::spawn_listening;
use support::raw::{Raw, words};
use support::redis::{RedisServer, free_port};

const OK: &[u8] = b"+OK\r\n";
const DRAIN: Duration = Duration::from_millis(1500);

/// The `cachet` binary with `drain_delay` set, its admin endpoint on a free port.
fn start(redis: &RedisServer, dir: &std::path::Path) -> (Child, SocketAddr, SocketAddr) {
    let config = dir.join("cachet.toml");
    std::fs::write(
        &config,
        format!(
            "[listen]\ndrain_delay = \"{}ms\"\nshutdown_grace = \"2s\"\n",
            DRAIN.as_millis()
        ),
    )
    .unwrap();
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (child, addr) = spawn_listening(
        |addr| {
            Command::new(env!("CARGO_BIN_EXE_cachet"))
                .args(["--config", &config.to_string_lossy()])
                .args(["--listen", &addr.to_string()])
                .args(["--upstream", &redis.url()])
                .args(["--admin", &admin.to_string(), "--log-level", "error"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn cachet")
        },
        |addr| Raw::connect(addr).call(&words("PING")) == b"+PONG\r\n",
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while http::get(admin, "/readyz").0 != 200 {
        assert!(Instant::now() < deadline, "never ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, addr, admin)
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn wait_exit(child: &mut Child, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "still running after {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigterm_drains_then_stops() {
    let redis = RedisServer::start();
    let dir = tempdir();
    let (mut child, addr, admin) = start(&redis, &dir);
    let mut old = Raw::connect(addr);
    assert_eq!(old.call(&words("SET k 1")), OK);
    let sent = Instant::now();
    signal(&child, "TERM");
    // Not ready at once...
    let deadline = Instant::now() + Duration::from_millis(500);
    loop {
        let (status, body) = http::get(admin, "/readyz");
        if status == 503 {
            assert!(body.contains("draining"), "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "still ready after SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    }
    // ...but serving: the old client, and a new one.
    assert_eq!(old.call(&words("GET k")), b"$1\r\n1\r\n");
    let mut new = Raw::connect(addr);
    assert_eq!(new.call(&words("SET k 2")), OK);
    assert_eq!(old.call(&words("GET k")), b"$1\r\n2\r\n");
    assert!(
        child.try_wait().unwrap().is_none(),
        "exited during the drain"
    );
    // Then a graceful shutdown: clients closed, a clean exit, not before the delay.
    wait_exit(&mut child, DRAIN + Duration::from_secs(5));
    let took = sent.elapsed();
    assert!(took >= DRAIN, "stopped after {took:?}");
    assert!(old.closed_within(Duration::from_secs(1)));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sigint_stops_at_once() {
    let redis = RedisServer::start();
    let dir = tempdir();
    let (mut child, addr, _) = start(&redis, &dir);
    let mut c = Raw::connect(addr);
    assert_eq!(c.call(&words("SET k 1")), OK);
    signal(&child, "INT");
    let took = wait_exit(&mut child, Duration::from_secs(5));
    assert!(took < DRAIN, "took {took:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGHUP reloads the file (off the runtime's threads) without dropping a client.
#[test]
fn sighup_reloads_the_configuration() {
    let redis = RedisServer::start();
    let dir = tempdir();
    let (mut child, addr, _) = start(&redis, &dir);
    let mut c = Raw::connect(addr);
    assert_eq!(c.call(&words("ECHO before")), b"$6\r\nbefore\r\n");
    let config = dir.join("cachet.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("\n[commands]\ndeny = [\"ECHO\"]\n");
    std::fs::write(&config, text).unwrap();
    signal(&child, "HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let reply = c.call(&words("ECHO after"));
        if reply.starts_with(b"-") {
            assert!(
                String::from_utf8_lossy(&reply).contains("ECHO"),
                "{reply:?}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "not reloaded: {reply:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(&child, "INT");
    wait_exit(&mut child, Duration::from_secs(5));
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "cachet-drain-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A port already taken: cachet says so once, in one line, and exits non-zero.
#[test]
fn a_port_in_use_is_reported_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cachet"))
        .args([
            "--listen",
            &addr.to_string(),
            "--upstream",
            "redis://127.0.0.1:1/0",
        ])
        .args(["--admin", "off"])
        .output()
        .expect("run cachet");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let said = format!("cannot listen on {addr}: Address already in use (os error 98)");
    assert_eq!(stderr.matches(&said).count(), 1, "{stderr}");
    assert_eq!(stderr.matches("os error 98").count(), 1, "{stderr}");
}
