//! TLS on both sides: clients reach cachet over TLS (with and without client
//! certificates), cachet reaches a TLS-only `redis-server` (verified, with a client
//! certificate, with the wrong CA, `insecure`), hostile bytes on the TLS listener, and
//! TLS configuration errors and reload reports. Certificates are made at test time.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cachet::config::{Config, ListenTls, UpstreamTls};
use cachet::reload::ConfigSource;
use redis::AsyncCommands;
use support::cachet::{Cachet, config_for};
use support::certs::Pki;
use support::http;
use support::raw::{Raw, cmd, words};
use support::redis::RedisServer;
use tokio::io::AsyncWriteExt;

fn listen_tls(pki: &Pki) -> ListenTls {
    ListenTls {
        certificate: Some(pki.server_cert.clone()),
        key: Some(pki.server_key.clone()),
        ..ListenTls::default()
    }
}

fn upstream_ca(pki: &Pki) -> UpstreamTls {
    UpstreamTls {
        ca: Some(pki.ca.clone()),
        ..UpstreamTls::default()
    }
}

/// A `redis` crate client for cachet's TLS listener that trusts `pki`'s CA and, with
/// `identity`, presents that PKI's client certificate.
fn tls_client(addr: SocketAddr, pki: &Pki, identity: Option<&Pki>) -> redis::Client {
    redis::Client::build_with_tls(
        format!("rediss://127.0.0.1:{}/", addr.port()),
        redis::TlsCertificates {
            client_tls: identity.map(|id| redis::ClientTlsConfig {
                client_cert: id.client_cert_pem.clone().into_bytes(),
                client_key: id.client_key_pem.clone().into_bytes(),
            }),
            root_cert: Some(pki.ca_pem.clone().into_bytes()),
        },
    )
    .unwrap()
}

/// Connects and sends `PING`; any failure (handshake refused, connection closed) is
/// an `Err`. Bounded, so a hang fails the test.
async fn ping(client: &redis::Client) -> Result<String, String> {
    let attempt = async {
        let mut c = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut c).await
    };
    match tokio::time::timeout(Duration::from_secs(10), attempt).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

fn metric(cachet: &Cachet, series: &str) -> f64 {
    let (_, body) = http::get(cachet.admin.expect("admin enabled"), "/metrics");
    http::sample(&body, series)
}

fn with_admin(mut config: Config) -> Config {
    config.admin.address = Some("127.0.0.1:0".parse().unwrap());
    config
}

#[tokio::test]
async fn clients_over_tls_reach_a_plain_upstream() {
    let pki = Pki::new("listen");
    let redis = RedisServer::start();
    let mut config = config_for(&redis.url());
    config.listen.tls = Some(listen_tls(&pki));
    let cachet = Cachet::start_with(config);

    let client = tls_client(cachet.addr, &pki, None);
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = c.set("k", "v").await.unwrap();
    let v: String = c.get("k").await.unwrap();
    assert_eq!(v, "v");
    // Far more than a socket buffer in both directions: encrypted bytes that rustls
    // holds when the socket is full must still reach the client.
    let big: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
    let _: () = c.set("big", &big).await.unwrap();
    let back: Vec<u8> = c.get("big").await.unwrap();
    assert!(back == big, "the 4 MiB value came back changed");
    let mut pipe = redis::pipe();
    for _ in 0..2000 {
        pipe.cmd("INCR").arg("n");
    }
    let counts: Vec<i64> = pipe.query_async(&mut c).await.unwrap();
    assert_eq!(counts, (1..=2000).collect::<Vec<i64>>());
    // A transaction runs on a dedicated upstream connection; the client side is TLS.
    let (a, b): (i64, i64) = redis::pipe()
        .atomic()
        .cmd("INCR")
        .arg("t")
        .cmd("INCR")
        .arg("t")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!((a, b), (1, 2));

    // It all reached the plain upstream.
    let direct = redis::Client::open(redis.url()).unwrap();
    let mut d = direct.get_multiplexed_async_connection().await.unwrap();
    let n: i64 = d.get("n").await.unwrap();
    assert_eq!(n, 2000);
    let stored: Vec<u8> = d.get("big").await.unwrap();
    assert!(stored == big);
}

/// The upstream's `total_connections_received`, asked through cachet.
fn connections_received(c: &mut Raw) -> u64 {
    let info = c.call(&words("INFO stats"));
    String::from_utf8_lossy(&info)
        .lines()
        .find_map(|l| l.strip_prefix("total_connections_received:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("total_connections_received in INFO stats")
}

#[test]
fn every_upstream_connection_uses_tls() {
    let pki = Pki::new("upstream");
    // TLS only (`--port 0`): a plaintext connection could not reach it at all.
    let redis = RedisServer::start_tls(&pki, false, &["--requirepass", "sekret"]);
    let mut config = config_for(&format!("rediss://:sekret@127.0.0.1:{}/0", redis.port()));
    config.upstream.tls = Some(upstream_ca(&pki));
    let cachet = Cachet::start_with(config);
    let mut c = Raw::connect(cachet.addr);
    // The login is checked on a connection of its own, over TLS too.
    let wrong = c.call(&words("AUTH wrong"));
    assert!(wrong.starts_with(b"-WRONGPASS"), "{wrong:?}");
    assert_eq!(c.call(&words("AUTH sekret")), b"+OK\r\n");

    // Shared connections.
    assert_eq!(c.call(&words("SET k v")), b"+OK\r\n");
    assert_eq!(c.call(&words("GET k")), b"$1\r\nv\r\n");
    let big: Vec<u8> = (0..4u32 << 20).map(|i| (i % 253) as u8).collect();
    assert_eq!(c.call(&cmd(&[b"SET", b"big", &big])), b"+OK\r\n");
    let mut expected = format!("${}\r\n", big.len()).into_bytes();
    expected.extend_from_slice(&big);
    expected.extend_from_slice(b"\r\n");
    assert!(c.call(&words("GET big")) == expected);
    // A cache keyspace: the lease scripts are loaded over TLS as connections open; a
    // miss takes a lease and the fill under it is stored.
    assert_eq!(c.call(&words("GET :1:item")), b"$-1\r\n");
    assert_eq!(c.call(&words("SET :1:item filled")), b"+OK\r\n");
    assert_eq!(c.call(&words("GET :1:item")), b"$6\r\nfilled\r\n");
    // Dedicated connections, several times: after the first transaction, each one
    // reuses the same TLS connection from the idle pool (no new connection upstream).
    let mut accepted = Vec::new();
    for _ in 0..3 {
        assert_eq!(c.call(&words("MULTI")), b"+OK\r\n");
        assert_eq!(c.call(&words("INCR t")), b"+QUEUED\r\n");
        let exec = c.call(&words("EXEC"));
        assert!(exec.starts_with(b"*1\r\n:"), "{exec:?}");
        accepted.push(connections_received(&mut c));
    }
    assert_eq!(accepted[0], accepted[2], "idle TLS connection not reused");
    assert_eq!(c.call(&words("BLPOP nothing 0.1")), b"*-1\r\n");
    let mut sub = Raw::connect(cachet.addr);
    assert_eq!(sub.call(&words("AUTH sekret")), b"+OK\r\n");
    assert_eq!(
        sub.call(&words("SUBSCRIBE ch")),
        b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n"
    );
    assert_eq!(c.call(&words("PUBLISH ch hello")), b":1\r\n");
    assert_eq!(
        sub.frame(),
        b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhello\r\n"
    );
}

#[test]
fn an_upstream_that_requires_client_certificates_gets_one() {
    let pki = Pki::new("mutual-upstream");
    let redis = RedisServer::start_tls(&pki, true, &[]);
    let mut config = config_for(&redis.url());
    config.upstream.tls = Some(upstream_ca(&pki));
    let cachet = Cachet::start_with(config.clone());
    let refused = Raw::connect(cachet.addr).call(&words("PING"));
    let text = String::from_utf8_lossy(&refused);
    assert!(text.starts_with("-ERR cachet: upstream"), "{text}");
    drop(cachet);

    config.upstream.tls = Some(UpstreamTls {
        certificate: Some(pki.client_cert.clone()),
        key: Some(pki.client_key.clone()),
        ..upstream_ca(&pki)
    });
    let cachet = Cachet::start_with(config);
    let mut c = Raw::connect(cachet.addr);
    assert_eq!(c.call(&words("PING")), b"+PONG\r\n");
    assert_eq!(c.call(&words("MULTI")), b"+OK\r\n");
    assert_eq!(c.call(&words("PING")), b"+QUEUED\r\n");
    assert_eq!(c.call(&words("EXEC")), b"*1\r\n+PONG\r\n");
}

#[tokio::test]
async fn mutual_tls_serves_only_clients_with_a_trusted_certificate() {
    let pki = Pki::new("mtls");
    let stranger = Pki::new("stranger");
    let redis = RedisServer::start();
    let mut config = with_admin(config_for(&redis.url()));
    config.listen.tls = Some(ListenTls {
        client_ca: Some(pki.ca.clone()),
        ..listen_tls(&pki)
    });
    let cachet = Cachet::start_with(config);

    let anonymous = ping(&tls_client(cachet.addr, &pki, None)).await;
    assert!(anonymous.is_err(), "served without a certificate");
    let foreign = ping(&tls_client(cachet.addr, &pki, Some(&stranger))).await;
    assert!(foreign.is_err(), "served with another CA's certificate");
    assert_eq!(
        ping(&tls_client(cachet.addr, &pki, Some(&pki))).await,
        Ok("PONG".to_owned())
    );
    let failures = metric(&cachet, "cachet_tls_handshake_failures_total");
    assert!(failures >= 2.0, "{failures}");
}

/// `/readyz` status once it settles on `want`, or the last one seen after 5 s.
fn readyz(cachet: &Cachet, want: u16) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, _) = http::get(cachet.admin.expect("admin enabled"), "/readyz");
        if status == want || Instant::now() > deadline {
            return status;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_untrusted_upstream_is_refused_unless_insecure_is_chosen() {
    let pki = Pki::new("real");
    let wrong = Pki::new("wrong");
    let redis = RedisServer::start_tls(&pki, false, &[]);
    let mut config = with_admin(config_for(&redis.url()));
    config.upstream.tls = Some(upstream_ca(&wrong));
    let cachet = Cachet::start_with(config.clone());
    let reply = Raw::connect(cachet.addr).call(&words("GET k"));
    let text = String::from_utf8_lossy(&reply);
    assert!(
        text.starts_with(
            "-ERR cachet: upstream unavailable: TLS handshake failed: invalid peer certificate"
        ),
        "{text}"
    );
    // Still not ready a while later: it keeps failing, and says so.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(readyz(&cachet, 200), 503);
    drop(cachet);

    config.upstream.tls = Some(UpstreamTls {
        insecure: true,
        ..UpstreamTls::default()
    });
    let cachet = Cachet::start_with(config);
    assert_eq!(readyz(&cachet, 200), 200);
    let mut c = Raw::connect(cachet.addr);
    assert_eq!(c.call(&words("SET k v")), b"+OK\r\n");
    assert_eq!(c.call(&words("GET k")), b"$1\r\nv\r\n");
}

#[tokio::test]
async fn garbage_on_the_tls_listener_closes_only_that_connection() {
    let pki = Pki::new("garbage");
    let redis = RedisServer::start();
    let mut config = with_admin(config_for(&redis.url()));
    // Long enough that the silent client below is still pending after everything
    // else; a hostile input that fails its handshake is closed at once regardless.
    let handshake_timeout = Duration::from_secs(3);
    config.listen.tls = Some(ListenTls {
        handshake_timeout,
        ..listen_tls(&pki)
    });
    let cachet = Cachet::start_with(config);
    let client = tls_client(cachet.addr, &pki, None);
    let mut served = client.get_multiplexed_async_connection().await.unwrap();

    // A client that connects and says nothing holds a handshake open meanwhile.
    let mut silent = Raw::connect(cachet.addr);
    let silent_since = Instant::now();
    let mut noise: Vec<u8> = Vec::with_capacity(4096);
    let mut x: u32 = 0x2545_f491;
    for _ in 0..4096 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        noise.push(x as u8);
    }
    let mut huge_record = b"\x16\x03\x01\xff\xff".to_vec();
    huge_record.extend_from_slice(&[0u8; 1024]);
    let inputs: [&[u8]; 5] = [
        b"*1\r\n$4\r\nPING\r\n",
        b"PING\r\n",
        b"GET / HTTP/1.1\r\nhost: x\r\n\r\n",
        &huge_record,
        &noise,
    ];
    for input in inputs {
        let mut raw = Raw::connect(cachet.addr);
        raw.send(input);
        assert!(
            raw.closed_within(Duration::from_secs(5)),
            "connection kept open after {:?}",
            String::from_utf8_lossy(&input[..input.len().min(16)])
        );
        assert!(
            !raw.leftover().windows(4).any(|w| w == b"PONG"),
            "answered in plaintext"
        );
        // The established TLS client is served all along.
        let pong: String = redis::cmd("PING").query_async(&mut served).await.unwrap();
        assert_eq!(pong, "PONG");
    }
    // A new TLS client is served while the silent one is still pending.
    assert_eq!(ping(&client).await, Ok("PONG".to_owned()));
    assert!(
        !silent.closed_within(Duration::from_millis(10)),
        "the silent client was closed after {:?}, before the new client was served",
        silent_since.elapsed()
    );
    assert!(silent.closed_within(Duration::from_secs(10)));
    assert!(silent_since.elapsed() >= handshake_timeout - Duration::from_millis(100));
    let failures = metric(&cachet, "cachet_tls_handshake_failures_total");
    assert_eq!(failures, 6.0);
    let pong: String = redis::cmd("PING").query_async(&mut served).await.unwrap();
    assert_eq!(pong, "PONG");
}

/// The configuration errors of `text` (loaded as `tls.toml`), one per line.
fn errors(text: &str) -> Vec<String> {
    match Config::parse_with(text, "tls.toml", &cachet::reload::CHECKS) {
        Ok(_) => Vec::new(),
        Err(e) => e.errors.iter().map(ToString::to_string).collect(),
    }
}

fn toml_path(p: &std::path::Path) -> String {
    p.display().to_string().replace('\\', "/")
}

#[test]
fn tls_configuration_errors_name_the_line_and_key() {
    let pki = Pki::new("config");
    let other = Pki::new("other");
    let cert = toml_path(&pki.server_cert);
    let key = toml_path(&pki.server_key);
    let missing = toml_path(&pki.dir().join("missing.pem"));
    let not_pem = pki.dir().join("notes.txt");
    std::fs::write(&not_pem, "hello\n").unwrap();
    let not_pem = toml_path(&not_pem);
    let bad_base64 = pki.dir().join("bad.pem");
    std::fs::write(
        &bad_base64,
        "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let bad_base64 = toml_path(&bad_base64);
    let other_key = toml_path(&other.server_key);

    let listen = |body: &str| format!("[listen.tls]\n{body}\n");
    let cases: Vec<(String, Vec<String>)> = vec![
        (
            listen(&format!("certificate = \"{cert}\"\nkey = \"{other_key}\"")),
            vec![format!(
                "tls.toml:3:1: listen.tls.key: {other_key} does not match the certificate's public key"
            )],
        ),
        (
            listen(&format!("certificate = \"{missing}\"\nkey = \"{key}\"")),
            vec![format!(
                "tls.toml:2:1: listen.tls.certificate: cannot read {missing}: No such file or directory (os error 2)"
            )],
        ),
        (
            listen(&format!(
                "certificate = \"{cert}\"\nkey = \"{key}\"\nclient_ca = \"{not_pem}\""
            )),
            vec![format!(
                "tls.toml:4:1: listen.tls.client_ca: no certificate in {not_pem} (expected PEM \"BEGIN CERTIFICATE\" blocks)"
            )],
        ),
        (
            listen(&format!("certificate = \"{cert}\"\nkey = \"{cert}\"")),
            vec![format!(
                "tls.toml:3:1: listen.tls.key: no private key in {cert} (expected a PEM \"BEGIN PRIVATE KEY\" block)"
            )],
        ),
        (
            listen(&format!("key = \"{key}\"\nhandshake_timeout = \"soon\"")),
            vec![
                "tls.toml:1:9: listen.tls.certificate: missing required key".to_owned(),
                "tls.toml:3:1: listen.tls.handshake_timeout: invalid duration \"soon\"".to_owned(),
            ],
        ),
        (
            "[upstream]\nurl = \"rediss://127.0.0.1:6390/0\"\n\n[upstream.tls]\ninsecure = \"yes\"\nbogus = 1\n"
                .to_owned(),
            vec![
                "tls.toml:5:1: upstream.tls.insecure: invalid type: string \"yes\", expected a boolean".to_owned(),
                "tls.toml:6:1: upstream.tls.bogus: unknown field `bogus`".to_owned(),
            ],
        ),
        (
            format!("[upstream]\nurl = \"redis://127.0.0.1:6390/0\"\ntls = {{ ca = \"{cert}\" }}\n"),
            vec![
                "tls.toml:3:1: upstream.tls: set, but upstream.url is redis://; use rediss:// to connect with TLS"
                    .to_owned(),
            ],
        ),
        (
            format!(
                "[upstream]\nurl = \"rediss://127.0.0.1:6390/0\"\n\n[upstream.tls]\nca = \"{bad_base64}\"\n"
            ),
            vec![format!("tls.toml:5:1: upstream.tls.ca: {bad_base64}: not valid PEM")],
        ),
        (
            format!(
                "[upstream]\nurl = \"rediss://127.0.0.1:6390/0\"\n\n[upstream.tls]\ncertificate = \"{cert}\"\n"
            ),
            vec!["tls.toml:5:1: upstream.tls.certificate: needs key (its private key) as well".to_owned()],
        ),
        (
            format!(
                "[upstream]\nurl = \"rediss://127.0.0.1:6390/0\"\n\n[upstream.tls]\nca = \"{cert}\"\ninsecure = true\n"
            ),
            vec![
                "tls.toml:6:1: upstream.tls.insecure: insecure = true skips verification, so ca would be ignored; remove one of them"
                    .to_owned(),
            ],
        ),
    ];
    for (text, want) in cases {
        let got = errors(&text);
        assert_eq!(got.len(), want.len(), "{text}\n{got:#?}");
        for (got, want) in got.iter().zip(&want) {
            assert!(
                got.starts_with(want.as_str()),
                "{text}\ngot:  {got}\nwant: {want}"
            );
        }
    }

    // A valid setup loads, and --check-config says so; a broken one exits 2 and names
    // the key.
    let good = format!(
        "[listen.tls]\ncertificate = \"{cert}\"\nkey = \"{key}\"\nclient_ca = \"{}\"\n\n\
         [upstream]\nurl = \"rediss://localhost:6390/0\"\n\n[upstream.tls]\nca = \"{}\"\n\
         certificate = \"{}\"\nkey = \"{}\"\nserver_name = \"redis.internal\"\n",
        toml_path(&pki.ca),
        toml_path(&pki.ca),
        toml_path(&pki.client_cert),
        toml_path(&pki.client_key),
    );
    assert_eq!(errors(&good), Vec::<String>::new());
    let check = |text: &str| {
        let path = pki.dir().join("check.toml");
        std::fs::write(&path, text).unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_cachet"))
            .args(["--check-config", "--config"])
            .arg(&path)
            .output()
            .unwrap()
    };
    assert_eq!(check(&good).status.code(), Some(0));
    let out = check(&listen(&format!(
        "certificate = \"{cert}\"\nkey = \"{other_key}\""
    )));
    assert_eq!(out.status.code(), Some(2));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains(":3:1: listen.tls.key: ") && said.contains("does not match"),
        "{said}"
    );
}

#[tokio::test]
async fn reload_reports_tls_changes_as_needing_a_restart() {
    let pki = Pki::new("reload");
    let rotated = Pki::new("rotated");
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::copy(&pki.server_cert, &cert).unwrap();
    std::fs::copy(&pki.server_key, &key).unwrap();
    let file = dir.path().join("cachet.toml");
    let text = |extra: &str| {
        format!(
            "[listen]\naddress = \"127.0.0.1:0\"\n\n[listen.tls]\ncertificate = \"{}\"\nkey = \"{}\"\n{extra}\n\
             [upstream]\nurl = \"{}\"\n\n[admin]\naddress = \"off\"\n",
            toml_path(&cert),
            toml_path(&key),
            redis.url()
        )
    };
    std::fs::write(&file, text("")).unwrap();
    let config = Config::load(&file).unwrap();
    let source = ConfigSource {
        path: Some(file.clone()),
        overrides: Default::default(),
    };
    let cachet = Cachet::start_from(config, Some(source));
    let client = tls_client(cachet.addr, &pki, None);
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let reload = |c: &mut redis::aio::MultiplexedConnection| {
        let mut c = c.clone();
        async move {
            redis::cmd("CACHET")
                .arg("RELOAD")
                .query_async::<String>(&mut c)
                .await
                .unwrap()
        }
    };
    assert!(
        reload(&mut c).await.ends_with("needs a restart: none"),
        "an unchanged file"
    );
    // Rotated files at the same paths: loaded at start only.
    std::fs::copy(&rotated.server_cert, &cert).unwrap();
    std::fs::copy(&rotated.server_key, &key).unwrap();
    let report = reload(&mut c).await;
    assert!(
        report.ends_with("needs a restart: TLS certificate files"),
        "{report}"
    );
    std::fs::write(&file, text("handshake_timeout = \"2s\"")).unwrap();
    let report = reload(&mut c).await;
    assert!(report.contains("listen.tls"), "{report}");
    // The running listener still presents the certificate it started with.
    assert_eq!(ping(&client).await, Ok("PONG".to_owned()));
    assert!(
        ping(&tls_client(cachet.addr, &rotated, None))
            .await
            .is_err()
    );
}

/// A TLS client that asks for a reply larger than the socket buffers take and stops
/// reading is still closed by `idle_timeout` once cachet has handed the whole reply to
/// TLS: the rest of it and close_notify can never reach the client, and closing must not
/// wait for them (the connection and its slot would be held forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_that_stops_reading_is_closed_when_idle() {
    let pki = Pki::new("stops-reading");
    let redis = RedisServer::start();
    let mut config = with_admin(config_for(&redis.url()));
    config.listen.tls = Some(listen_tls(&pki));
    config.listen.idle_timeout = Duration::from_millis(500);
    let cachet = Cachet::start_with(config);
    let mut direct = Raw::connect(redis.addr());
    let value = vec![b'x'; 12 << 20];
    assert_eq!(direct.call(&cmd(&[b"SET", b"big", &value])), b"+OK\r\n");
    let connector = cachet::tls::connector("127.0.0.1", &upstream_ca(&pki)).unwrap();
    // Sends `GETRANGE big 0 <len - 1>` and never reads; returns the client and its port.
    let stop_reading = |len: usize| {
        let connector = &connector;
        async move {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.set_recv_buffer_size(4096).unwrap();
            let tcp = socket.connect(cachet.addr).await.unwrap();
            let port = tcp.local_addr().unwrap().port();
            let mut tls = connector
                .connector
                .connect(connector.server_name.clone(), tcp)
                .await
                .unwrap();
            let end = (len - 1).to_string();
            tls.write_all(&cmd(&[b"GETRANGE", b"big", b"0", end.as_bytes()]))
                .await
                .unwrap();
            tls.flush().await.unwrap();
            (tls, port)
        }
    };
    let connections = || metric(&cachet, "cachet_client_connections");
    // How much the kernel holds for such a client: a reply too large for cachet to
    // hand over (8 MiB stay owed, exempt from idle_timeout).
    let (probe, port) = stop_reading(value.len()).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let held = queued(cachet.addr.port(), port);
    drop(probe);
    wait_until(Duration::from_secs(5), || connections() == 0.0).await;

    // A reply a little larger: the kernel takes most of it, rustls the rest (up to its
    // 64 KiB buffer), and nothing is left owed, so idle_timeout applies.
    let (_client, _) = stop_reading(held + 16 * 1024).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(connections(), 1.0);
    let since = Instant::now();
    assert!(
        wait_until(Duration::from_secs(6), || connections() == 0.0).await,
        "a TLS client that stopped reading still held its connection after {:?} \
         (kernel held {held} bytes)",
        since.elapsed()
    );
}

async fn wait_until(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

/// Bytes queued in the kernel between cachet's `server` port and a client's `client`
/// port on 127.0.0.1: cachet's send queue and the client's receive queue.
fn queued(server: u16, client: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let hex = |s: &str| usize::from_str_radix(s, 16).unwrap();
    let port = |a: &str| hex(a.rsplit(':').next().unwrap());
    let mut total = 0;
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (local, remote) = (port(f[1]), port(f[2]));
        let (tx, rx) = f[4].split_once(':').unwrap();
        if (local, remote) == (server.into(), client.into()) {
            total += hex(tx);
        }
        if (local, remote) == (client.into(), server.into()) {
            total += hex(rx);
        }
    }
    assert!(total > 0, "no queued bytes found for port {client}");
    total
}
