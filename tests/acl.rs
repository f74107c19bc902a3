//! Redis's authentication and ACLs hold through cachet: without an `[auth]` section a
//! client is asked to log in exactly when Redis would ask it, and its commands run as
//! the Redis user it logged in as, so that Redis itself refuses what that user may not
//! do, in its own words (docs/security.md). Every session here runs twice, once
//! straight against a Redis and once through cachet against another Redis set up the
//! same way, and the replies must be byte-identical.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use std::time::Duration;

use support::cachet::{Cachet, config_for};
use support::compare::{Twin, hello_without_id, lines};
use support::raw::{Raw, words};
use support::redis::RedisServer;

const OK: &[u8] = b"+OK\r\n";
const ADMIN: &str = "admin-pw";

/// Two Redis servers set up alike (started with `redis_args`, then `acl` run on each
/// as its administrator), one of them behind cachet, whose own credentials are
/// `cachet_login` (user, password).
struct AclPair {
    direct: RedisServer,
    upstream: RedisServer,
    cachet: Cachet,
    admin_login: String,
}

impl AclPair {
    fn start(redis_args: &[&str], acl: &[&str], cachet_login: (&str, &str)) -> AclPair {
        AclPair::start_with(redis_args, acl, cachet_login, |_| {})
    }

    fn start_with(
        redis_args: &[&str],
        acl: &[&str],
        cachet_login: (&str, &str),
        tweak: impl FnOnce(&mut cachet::Config),
    ) -> AclPair {
        let admin_login = format!("AUTH {} {}", cachet_login.0, cachet_login.1);
        let direct = RedisServer::start_with(redis_args);
        let upstream = RedisServer::start_with(redis_args);
        for redis in [&direct, &upstream] {
            let mut admin = Raw::connect(redis.addr());
            // cachet's user may not exist yet (the `default` user is still open then).
            let _ = admin.call(&words(&admin_login));
            for rule in acl {
                assert_eq!(admin.call(&words(rule)), OK, "{rule}");
            }
        }
        let url = format!(
            "redis://{}:{}@{}/0",
            cachet_login.0,
            cachet_login.1,
            upstream.addr()
        );
        let mut config = config_for(&url);
        tweak(&mut config);
        let cachet = Cachet::start_with(config);
        AclPair {
            direct,
            upstream,
            cachet,
            admin_login,
        }
    }

    fn twin(&self) -> Twin {
        Twin {
            direct: Raw::connect(self.direct.addr()),
            proxied: Raw::connect(self.cachet.addr),
        }
    }

    /// Runs `command` on both servers as their administrator.
    fn admin(&self, command: &str) {
        for redis in [&self.direct, &self.upstream] {
            let mut admin = Raw::connect(redis.addr());
            assert_eq!(admin.call(&words(&self.admin_login)), OK);
            let r = admin.call(&words(command));
            assert!(
                !r.starts_with(b"-"),
                "{command}: {}",
                String::from_utf8_lossy(&r)
            );
        }
    }

    /// Waits until the upstream no longer holds `key` (a re-sent invalidation).
    fn wait_deleted(&self, key: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while self.upstream_get(key) != b"$-1\r\n" {
            assert!(
                std::time::Instant::now() < deadline,
                "the invalidation of {key} was not re-sent"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What the upstream holds for `key`, read as its administrator.
    fn upstream_get(&self, key: &str) -> Vec<u8> {
        let mut admin = Raw::connect(self.upstream.addr());
        assert_eq!(admin.call(&words(&self.admin_login)), OK);
        admin.call(&words(&format!("GET {key}")))
    }
}

/// The ACL users of these tests: `reader` may only `GET`; `app` may do anything to
/// `app:*` and Django-style `:1:*` keys (and cachet's state keys and channel, which it
/// needs to write through cachet) but no dangerous command.
const USERS: &[&str] = &[
    "ACL SETUSER reader on >reader-pw ~* +get",
    "ACL SETUSER app on >app-pw ~app:* ~:1:* ~__cachet:* &cachet:invalidate +@all -@dangerous",
];

fn requirepass_pair() -> AclPair {
    AclPair::start(&["--requirepass", ADMIN], USERS, ("default", ADMIN))
}

#[test]
fn the_reported_table_holds_row_by_row() {
    let pair = requirepass_pair();
    let mut c = pair.twin();
    c.script(&lines("SET x 1\nGET x\nFLUSHALL"));
    let mut c = pair.twin();
    c.script(&lines(
        "AUTH reader reader-pw\nSET x 2\nFLUSHALL\nGET x\nDEL x\nEXPIRE x 10\nACL WHOAMI",
    ));
    assert_eq!(pair.upstream_get("x"), b"$-1\r\n");
}

#[test]
fn logins_and_resets_answer_as_redis_does() {
    let pair = requirepass_pair();
    let mut c = pair.twin();
    c.script(&lines(
        "
        PING
        HELLO 3
        AUTH wrong
        AUTH nosuch user
        AUTH reader wrong
        GET k
        AUTH reader reader-pw
        ACL WHOAMI
        GET k
        SET k v
        AUTH app app-pw
        ACL WHOAMI
        SET app:k v
        GET app:k
        SET k v
        RESET
        GET app:k
        ACL WHOAMI
        ",
    ));
    c.call_with(&words("HELLO 3 AUTH app wrong"), hello_without_id);
    c.call_with(&words("HELLO 3 AUTH app app-pw"), hello_without_id);
    c.script(&lines("ACL WHOAMI\nGET app:k\nHELLO 2 AUTH default nope"));
    c.call_with(
        &words(&format!("HELLO 2 AUTH default {ADMIN}")),
        hello_without_id,
    );
    c.script(&lines("ACL WHOAMI\nGET app:k\nRESET\nPING"));
}

#[test]
fn a_pipelined_mix_of_allowed_and_forbidden_commands() {
    let pair = requirepass_pair();
    let mut c = pair.twin();
    c.call(&words("AUTH app app-pw"));
    c.pipeline(&lines(
        "
        SET app:1 a
        SET other b
        GET app:1
        GET other
        SET :1:cached c
        GET :1:cached
        MSET app:2 x other y
        MSET app:2 x app:3 y
        INCR app:n
        FLUSHALL
        DEL app:1 other
        KEYS *
        GET app:1
        MULTI
        SET app:4 z
        SET other z
        EXEC
        GET app:4
        ",
    ));
    assert_eq!(pair.upstream_get("other"), b"$-1\r\n");
    assert_eq!(pair.upstream_get(":1:cached"), b"$1\r\nc\r\n");
}

#[test]
fn a_right_removed_while_connected_is_refused_at_once() {
    let pair = requirepass_pair();
    let mut c = pair.twin();
    c.script(&lines(
        "AUTH app app-pw\nSET app:k 1\nGET app:k\nINCR app:n",
    ));
    pair.admin("ACL SETUSER app -incr -get");
    c.script(&lines("INCR app:n\nGET app:k\nSET app:k 2"));
    pair.admin("ACL SETUSER app +get resetkeys ~other:*");
    c.script(&lines("GET app:k\nGET other:k\nSET other:k 1"));
}

#[test]
fn a_deleted_users_sessions_end_as_redis_ends_them() {
    let pair = requirepass_pair();
    let mut c = pair.twin();
    c.script(&lines("AUTH app app-pw\nSET app:k 1"));
    let mut bystander = pair.twin();
    bystander.script(&lines("AUTH reader reader-pw\nGET app:k"));
    pair.admin("ACL DELUSER app");
    c.closed(Duration::from_secs(3));
    // Other users' sessions go on.
    bystander.script(&lines("GET app:k\nACL WHOAMI"));
    // Logging in again as the deleted user fails as it does on Redis.
    let mut again = pair.twin();
    again.script(&lines("AUTH app app-pw\nGET app:k"));
}

#[test]
fn with_the_default_user_off_only_named_users_get_in() {
    let mut acl = vec![
        "ACL SETUSER cachet on >cachet-pw ~* &* +@all",
        "ACL SETUSER default off",
    ];
    acl.extend_from_slice(USERS);
    let pair = AclPair::start(&[], &acl, ("cachet", "cachet-pw"));
    let mut c = pair.twin();
    c.script(&lines(
        "
        PING
        GET k
        AUTH default anything
        AUTH app app-pw
        SET :1:k v
        GET :1:k
        ACL WHOAMI
        SET k v
        RESET
        GET :1:k
        ",
    ));
    c.call_with(&words("HELLO 3"), hello_without_id);
}

/// An open `default` user with narrow rights: a client that never logs in has those
/// rights through cachet too, not cachet's own.
#[test]
fn clients_that_never_log_in_have_the_default_users_rights() {
    let acl = [
        "ACL SETUSER cachet on >cachet-pw ~* &* +@all",
        "ACL SETUSER default resetkeys ~public:* -@all +get +ping +acl|whoami",
    ];
    let pair = AclPair::start(&[], &acl, ("cachet", "cachet-pw"));
    let mut c = pair.twin();
    c.script(&lines(
        "PING\nACL WHOAMI\nGET public:k\nGET secret\nSET public:k v\nFLUSHALL\nCONFIG GET maxmemory",
    ));
}

/// A user allowed the write but not what cachet adds to it: nothing is written, and
/// the error says what is missing. (Direct Redis would have run it: here cachet's
/// reply differs on purpose, and says why.)
#[test]
fn a_user_without_cachets_rights_gets_an_error_and_nothing_is_written() {
    let acl = ["ACL SETUSER rw on >rw-pw ~* +@read +@write"];
    let pair = AclPair::start(&["--requirepass", ADMIN], &acl, ("default", ADMIN));
    let mut c = Raw::connect(pair.cachet.addr);
    assert_eq!(c.call(&words("AUTH rw rw-pw")), OK);
    for write in [
        "SET x 1",
        "SET :1:k v",
        "DEL x",
        "MSET x 1 :1:k 2",
        "INCR n",
    ] {
        let r = c.call(&words(write));
        let text = String::from_utf8_lossy(&r);
        assert!(
            text.starts_with("-NOPERM cachet: user 'rw' may not run what cachet adds"),
            "{write}: {text}"
        );
        assert!(text.contains("(it may not run: eval)"), "{text}");
    }
    for key in ["x", ":1:k", "n"] {
        assert_eq!(pair.upstream_get(key), b"$-1\r\n", "{key}");
    }
    // Reads need nothing of cachet's: a miss is recorded with cachet's own rights.
    assert_eq!(c.call(&words("GET :1:k")), b"$-1\r\n");
    assert_eq!(c.call(&words("GET x")), b"$-1\r\n");
    // Inside the client's own transaction the refusal aborts it.
    assert_eq!(
        c.call(&words("MULTI")),
        b"-NOPERM this user has no permissions to run the 'multi' command\r\n"
    );
    // Once granted, the same writes go through.
    pair.admin("ACL SETUSER rw +@all &*");
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(c.call(&words("SET x 1")), OK);
    assert_eq!(pair.upstream_get("x"), b"$1\r\n1\r\n");
}

/// Many clients of several users at once: each runs as its own user, replies never
/// cross users, and each user has a bounded number of upstream connections.
#[test]
fn many_clients_of_several_users_stay_apart() {
    const USERS_N: usize = 4;
    const CLIENTS_PER_USER: usize = 6;
    let acl: Vec<String> = (0..USERS_N)
        .map(|u| format!("ACL SETUSER u{u} on >p{u} ~u{u}:* ~__cachet:* &* +@all -@dangerous"))
        .collect();
    let acl: Vec<&str> = acl.iter().map(String::as_str).collect();
    let pair = AclPair::start(&["--requirepass", ADMIN], &acl, ("default", ADMIN));
    let addr = pair.cachet.addr;
    let threads: Vec<_> = (0..USERS_N * CLIENTS_PER_USER)
        .map(|i| {
            std::thread::spawn(move || {
                let u = i % USERS_N;
                let mut c = Raw::connect(addr);
                assert_eq!(c.call(&words(&format!("AUTH u{u} p{u}"))), OK);
                for round in 0..40 {
                    let key = format!("u{u}:c{i}");
                    let value = format!("{i}-{round}");
                    let mut batch = words(&format!("SET {key} {value}"));
                    batch.extend(words(&format!("GET {key}")));
                    batch.extend(words("ACL WHOAMI"));
                    batch.extend(words(&format!("GET u{}:c0", (u + 1) % USERS_N)));
                    c.send(&batch);
                    assert_eq!(c.frame(), OK);
                    assert_eq!(
                        c.frame(),
                        format!("${}\r\n{value}\r\n", value.len()).into_bytes()
                    );
                    let me = format!("u{u}");
                    assert_eq!(c.frame(), format!("$2\r\n{me}\r\n").into_bytes());
                    let other = c.frame();
                    assert!(
                        other.starts_with(b"-NOPERM"),
                        "{}",
                        String::from_utf8_lossy(&other)
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // Each user's clients share that user's few connections.
    let mut admin = Raw::connect(pair.upstream.addr());
    assert_eq!(admin.call(&words(&pair.admin_login)), OK);
    let list = String::from_utf8(admin.call(&words("CLIENT LIST"))).unwrap();
    for u in 0..USERS_N {
        let n = list.matches(&format!(" user=u{u} ")).count();
        assert!((1..=2).contains(&n), "u{u} has {n} connections:\n{list}");
    }
}

/// `upstream.max_users` bounds the users logged in at once; a user whose clients are
/// all gone makes room for another.
#[test]
fn the_number_of_users_at_once_is_bounded() {
    let acl: Vec<String> = (0..3)
        .map(|u| format!("ACL SETUSER u{u} on >p{u} ~* &* +@all"))
        .collect();
    let acl: Vec<&str> = acl.iter().map(String::as_str).collect();
    let pair = AclPair::start_with(&["--requirepass", ADMIN], &acl, ("default", ADMIN), |c| {
        c.upstream.max_users = 2;
    });
    let mut a = Raw::connect(pair.cachet.addr);
    let mut b = Raw::connect(pair.cachet.addr);
    let mut c = Raw::connect(pair.cachet.addr);
    assert_eq!(a.call(&words("AUTH u0 p0")), OK);
    assert_eq!(b.call(&words("AUTH u1 p1")), OK);
    assert_eq!(a.call(&words("PING")), b"+PONG\r\n");
    assert_eq!(
        c.call(&words("AUTH u2 p2")),
        b"-ERR cachet: too many upstream users logged in at once (upstream.max_users = 2)\r\n"
    );
    // A user already in use is no new one.
    assert_eq!(c.call(&words("AUTH u1 p1")), OK);
    drop(a);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(c.call(&words("AUTH u2 p2")), OK);
    assert_eq!(c.call(&words("ACL WHOAMI")), b"$2\r\nu2\r\n");
    assert_eq!(b.call(&words("ACL WHOAMI")), b"$2\r\nu1\r\n");
}

/// A right of cachet's taken away between two checks of it: a write whose `MULTI` is
/// refused ran outside its transaction, so its invalidation is re-sent with cachet's own
/// rights (a `cache` key is deleted), as for a write whose connection broke.
#[test]
fn a_write_whose_multi_is_refused_still_gets_its_invalidation() {
    let pair = requirepass_pair();
    let mut c = Raw::connect(pair.cachet.addr);
    assert_eq!(c.call(&words("AUTH app app-pw")), OK);
    assert_eq!(c.call(&words("SET :1:k v")), OK);
    assert_eq!(c.call(&words("APPEND :1:k w")), b":2\r\n");
    pair.admin("ACL SETUSER app -multi -eval");
    let r = c.call(&words("APPEND :1:k x"));
    assert!(r.starts_with(b"-"), "{}", String::from_utf8_lossy(&r));
    pair.wait_deleted(":1:k");
    // Once cachet has checked again (the first write after a second starts the check),
    // such writes are refused before anything runs.
    std::thread::sleep(Duration::from_millis(1100));
    let _ = c.call(&words("APPEND :1:k y"));
    pair.wait_deleted(":1:k");
    std::thread::sleep(Duration::from_millis(100));
    let r = c.call(&words("APPEND :1:k y"));
    assert!(
        r.starts_with(b"-NOPERM cachet: user 'app'"),
        "{}",
        String::from_utf8_lossy(&r)
    );
    assert_eq!(pair.upstream_get(":1:k"), b"$-1\r\n");
}

/// With `[auth]`, each local user may name the upstream user its commands run as, so
/// that per-application rights hold behind cachet's own logins.
#[test]
fn auth_users_run_as_their_upstream_users() {
    use cachet::config::{AuthConfig, AuthUser};
    use sha2::{Digest, Sha256};
    let sha = |p: &str| -> String {
        Sha256::digest(p.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let dir = std::env::temp_dir().join(format!("cachet-acl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("reader.pass");
    std::fs::write(&file, "reader-pw\n").unwrap();
    let pair = AclPair::start_with(&["--requirepass", ADMIN], USERS, ("default", ADMIN), |c| {
        c.auth = Some(AuthConfig {
            password_sha256: Some(sha("local-admin")),
            users: vec![AuthUser {
                name: "dashboard".into(),
                password_sha256: sha("local-pw"),
                password_sha256_file: None,
                upstream_user: Some("reader".into()),
                upstream_password_file: Some(file.clone()),
            }],
            ..AuthConfig::default()
        });
    });
    let mut c = Raw::connect(pair.cachet.addr);
    assert_eq!(
        c.call(&words("GET k")),
        b"-NOAUTH Authentication required.\r\n"
    );
    assert_eq!(c.call(&words("AUTH dashboard local-pw")), OK);
    assert!(c.call(&words("ACL WHOAMI")).starts_with(b"-NOPERM"));
    assert_eq!(
        c.call(&words("SET k v")),
        b"-NOPERM this user has no permissions to run the 'set' command\r\n"
    );
    assert_eq!(c.call(&words("GET k")), b"$-1\r\n");
    // The default user of `[auth]` names none: it runs as cachet's own user.
    assert_eq!(c.call(&words("AUTH local-admin")), OK);
    assert_eq!(c.call(&words("SET k v")), OK);
    assert_eq!(c.call(&words("ACL WHOAMI")), b"$7\r\ndefault\r\n");
    std::fs::remove_dir_all(&dir).unwrap();
}
