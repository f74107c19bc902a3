//! Where cachet listens and what it connects to: Unix sockets on both sides (as Redis's
//! `unixsocket` and redis-py's `unix://` URLs), and host names, which an upstream
//! connection resolves again on every connect.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;

use cachet::config::{Config, UpstreamUrl};
use support::cachet::{Cachet, config_for};
use support::raw::{Raw, words};
use support::redis::RedisServer;

/// One command over a Unix socket, and its reply (one line).
fn call_unix(stream: &mut UnixStream, command: &[u8]) -> Vec<u8> {
    use std::io::{Read, Write};
    stream.write_all(command).unwrap();
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    while !reply.ends_with(b"\r\n") {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "closed");
        reply.extend_from_slice(&buf[..n]);
    }
    reply
}

#[test]
fn cachet_listens_on_a_unix_socket_as_well_and_removes_it_at_exit() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cachet.sock");
    // A socket left behind by a cachet that did not exit cleanly is replaced.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let mut config = config_for(&redis.url());
    config.listen.unix_socket = Some(path.clone());
    config.listen.unix_socket_perm = Some(0o660);
    let mut cachet = Cachet::start_with(config);
    let meta = std::fs::metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);

    let mut unix = UnixStream::connect(&path).unwrap();
    assert_eq!(call_unix(&mut unix, &words("SET k via-unix")), b"+OK\r\n");
    let mut tcp = Raw::connect(cachet.addr);
    assert_eq!(tcp.call(&words("GET k")), b"$8\r\nvia-unix\r\n");
    // A real client, pipelined.
    let client = redis::Client::open(format!("unix://{}", path.display())).unwrap();
    let mut conn = client.get_connection().unwrap();
    let (a, b): (String, i64) = redis::pipe()
        .cmd("GET")
        .arg("k")
        .cmd("INCR")
        .arg("n")
        .query(&mut conn)
        .unwrap();
    assert_eq!((a.as_str(), b), ("via-unix", 1));
    drop(conn);
    drop(unix);
    cachet.stop();
    assert!(!path.exists(), "the socket file is removed at exit");
}

/// What a cachet told to listen on the Unix socket `path` says as it fails to start.
fn refused_start(redis: &RedisServer, dir: &std::path::Path, path: &std::path::Path) -> String {
    let text = format!(
        "[listen]\naddress = \"127.0.0.1:0\"\nunix_socket = \"{}\"\n[upstream]\nurl = \"{}\"\n",
        path.display(),
        redis.url()
    );
    let file = dir.join("cachet.toml");
    std::fs::write(&file, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cachet"))
        .args(["--config", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_file_in_the_way_of_the_unix_socket_stops_the_start() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("not-a-socket");
    std::fs::write(&path, "keep me").unwrap();
    let stderr = refused_start(&redis, dir.path(), &path);
    assert!(
        stderr.contains("not-a-socket") && stderr.contains("not a socket"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep me");
}

#[test]
fn the_upstream_may_be_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("redis.sock");
    let socket_arg = socket.to_string_lossy().into_owned();
    let redis = RedisServer::start_with(&["--unixsocket", &socket_arg, "--unixsocketperm", "700"]);
    let url = format!("unix://{}?db=2", socket.display());
    let cachet = Cachet::start(&url);
    let mut c = Raw::connect(cachet.addr);
    assert_eq!(c.call(&words("SET k v")), b"+OK\r\n");
    // Written in database 2, with its invalidation, over the socket.
    let mut direct = Raw::connect(redis.addr());
    assert_eq!(direct.call(&words("SELECT 2")), b"+OK\r\n");
    assert_eq!(direct.call(&words("GET k")), b"$1\r\nv\r\n");
    let clients = String::from_utf8(direct.call(&words("CLIENT LIST"))).unwrap();
    assert!(
        clients.contains(&format!("laddr={socket_arg}:0")),
        "cachet's connections come over the socket: {clients}"
    );
    // A stream of commands keeps its order and replies over the socket, through the
    // fill protocol too (a `cache` key: a miss, its fill, a hit).
    assert_eq!(c.call(&words("GET :1:page")), b"$-1\r\n");
    assert_eq!(c.call(&words("SET :1:page html")), b"+OK\r\n");
    assert_eq!(c.call(&words("GET :1:page")), b"$4\r\nhtml\r\n");
}

#[test]
fn host_names_are_resolved_for_the_listener_and_the_upstream() {
    let redis = RedisServer::start();
    let text = format!(
        "[listen]\naddress = \"localhost:0\"\n[upstream]\nurl = \"redis://localhost:{}/0\"\n",
        redis.addr().port()
    );
    let config = Config::parse(&text, "test").unwrap();
    assert!(config.listen.address.ip().is_loopback());
    assert_eq!(
        config.upstream.url,
        UpstreamUrl::parse(&format!("redis://localhost:{}/0", redis.addr().port())).unwrap()
    );
    let cachet = Cachet::start_with(config);
    let mut c = Raw::connect(cachet.addr);
    assert_eq!(c.call(&words("SET k v")), b"+OK\r\n");
    assert_eq!(c.call(&words("GET k")), b"$1\r\nv\r\n");
    // `--listen` takes a host name as well.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cachet"))
        .args(["--listen", "localhost:6380", "--check-config"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Over a Unix socket every upstream connection has the same address, so a session's
/// dedicated connection is known by its `CLIENT ID`: `CLIENT UNBLOCK` and `CLIENT
/// TRACKING … REDIRECT` still find it.
#[test]
fn client_unblock_and_tracking_redirect_work_over_a_unix_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("redis.sock");
    let socket_arg = socket.to_string_lossy().into_owned();
    let _redis = RedisServer::start_with(&["--unixsocket", &socket_arg]);
    let cachet = Cachet::start(&format!("unix://{}", socket.display()));
    let mut blocked = Raw::connect(cachet.addr);
    let id = blocked.call(&words("CLIENT ID"));
    let id = std::str::from_utf8(&id[1..id.len() - 2])
        .unwrap()
        .to_owned();
    blocked.send(&words("BLPOP list 0"));
    std::thread::sleep(std::time::Duration::from_millis(200));
    let mut other = Raw::connect(cachet.addr);
    assert_eq!(
        other.call(&words(&format!("CLIENT UNBLOCK {id} TIMEOUT"))),
        b":1\r\n"
    );
    assert_eq!(blocked.frame(), b"*-1\r\n");

    // A subscriber's dedicated connection receives another client's invalidations.
    let mut subscriber = Raw::connect(cachet.addr);
    let sub_id = subscriber.call(&words("CLIENT ID"));
    let sub_id = std::str::from_utf8(&sub_id[1..sub_id.len() - 2])
        .unwrap()
        .to_owned();
    let confirm = subscriber.call(&words("SUBSCRIBE __redis__:invalidate"));
    assert!(confirm.starts_with(b"*3\r\n"), "{confirm:?}");
    assert_eq!(
        other.call(&words(&format!("CLIENT TRACKING ON REDIRECT {sub_id}"))),
        b"+OK\r\n"
    );
    assert_eq!(other.call(&words("GET tracked")), b"$-1\r\n");
    let mut writer = Raw::connect(cachet.addr);
    assert_eq!(writer.call(&words("SET tracked v")), b"+OK\r\n");
    let message = String::from_utf8_lossy(&subscriber.frame()).into_owned();
    assert!(message.contains("tracked"), "{message}");
}

#[test]
fn a_unix_socket_another_process_listens_on_is_left_alone() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("busy.sock");
    let _live = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let stderr = refused_start(&redis, dir.path(), &path);
    assert!(stderr.contains("another process listens"), "{stderr}");
    assert!(
        UnixStream::connect(&path).is_ok(),
        "the socket is still there"
    );
}
