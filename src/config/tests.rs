//! Loading whole files: defaults, every kind of error, lines and keys.

use std::time::Duration;

use super::*;

const SHIPPED: &str = include_str!("../../config/cachet.toml");

fn parse(text: &str) -> Result<Config, ConfigErrors> {
    Config::parse(text, "cachet.toml")
}

/// The errors of `text`, one `line: key: message` string each (origin left out).
fn errors(text: &str) -> Vec<String> {
    let errors = parse(text).expect_err("expected errors").errors;
    errors
        .iter()
        .map(|e| {
            assert_eq!(e.origin, "cachet.toml");
            let line = e.line.map_or("-".to_owned(), |l| l.to_string());
            format!("{line}: {}: {}", e.key, e.message)
        })
        .collect()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn defaults_equal_the_shipped_file() {
    assert_eq!(parse(SHIPPED).unwrap(), Config::default());
    assert_eq!(Config::default().validate(), Ok(()));
}

#[test]
fn an_empty_file_is_all_defaults() {
    assert_eq!(parse("").unwrap(), Config::default());
    assert_eq!(parse("# nothing\n\n").unwrap(), Config::default());
}

#[test]
fn every_setting_is_read() {
    let config = parse(
        r#"
keyspace = [
    { pattern = "s:*", mode = "cache", hold_off = "1s", write_through = "invalidate" },
    { pattern = "p:*", mode = "passthrough" },
    { pattern = "l:*", mode = "lock", over_max_ttl = "cap" },
]

[listen]
address = "[::1]:7000"
max_clients = 5
idle_timeout = "5m"
shutdown_grace = "1.5s"

[upstream]
url = "rediss://u:p@redis.internal:6390/4"
username = "other"
password = "secret"
connect_timeout = "250ms"
command_timeout = "2s"
shared_connections = 64

[limits]
max_bulk_len = "1gb"
max_multibulk_len = "1k"
max_inline_len = 4096
client_output_buffer = "1MiB"

[consistency]
invalidation_channel = "inv"
reserved_prefix = "_c:"
lease_ttl = "2s"
fill_window = "4s"
hold_off = "0s"
coalesce_wait = "10ms"

[commands]
deny = ["flushall", "Debug"]

[admin]
address = "off"

[log]
level = "warn,cachet=debug"
format = "json"
"#,
    )
    .unwrap();
    assert_eq!(config.listen.address, "[::1]:7000".parse().unwrap());
    assert_eq!(config.listen.max_clients, 5);
    assert_eq!(config.listen.idle_timeout, Duration::from_secs(300));
    assert_eq!(config.listen.shutdown_grace, ms(1500));
    let upstream = &config.upstream;
    assert!(upstream.url.tls);
    assert_eq!(upstream.url.address(), "redis.internal:6390");
    assert_eq!(upstream.url.db, 4);
    assert_eq!(upstream.username(), Some("other"));
    assert_eq!(upstream.password(), Some("secret"));
    assert_eq!(upstream.connect_timeout, ms(250));
    assert_eq!(upstream.command_timeout, ms(2000));
    assert_eq!(upstream.shared_connections, 64);
    assert_eq!(
        config.limits,
        LimitsConfig {
            max_bulk_len: 1 << 30,
            max_multibulk_len: 1000,
            max_inline_len: 4096,
            client_output_buffer: 1 << 20,
        }
    );
    assert_eq!(
        config.consistency,
        ConsistencyConfig {
            invalidation_channel: "inv".into(),
            reserved_prefix: "_c:".into(),
            lease_ttl: ms(2000),
            fill_window: ms(4000),
            hold_off: Duration::ZERO,
            coalesce_wait: ms(10),
        }
    );
    assert_eq!(
        config.keyspace,
        vec![
            KeyspaceRule {
                pattern: "s:*".into(),
                mode: KeyspaceMode::Cache,
                max_ttl: None,
                hold_off: Some(ms(1000)),
                write_through: Some(WriteThrough::Invalidate),
                over_max_ttl: None,
            },
            KeyspaceRule {
                pattern: "p:*".into(),
                mode: KeyspaceMode::Passthrough,
                max_ttl: None,
                hold_off: None,
                write_through: None,
                over_max_ttl: None,
            },
            KeyspaceRule {
                pattern: "l:*".into(),
                mode: KeyspaceMode::Lock,
                max_ttl: Some(DEFAULT_LOCK_MAX_TTL),
                hold_off: None,
                write_through: None,
                over_max_ttl: Some(super::OverMaxTtl::Cap),
            },
        ]
    );
    assert_eq!(config.commands.deny, ["FLUSHALL", "DEBUG"]);
    assert_eq!(config.admin.address, None);
    assert_eq!(config.log.level, "warn,cachet=debug");
    assert_eq!(config.log.format, LogFormat::Json);
}

#[test]
fn admin_can_be_switched_off_either_way() {
    for off in ["\"\"", "\"off\""] {
        let config = parse(&format!("[admin]\naddress = {off}\n")).unwrap();
        assert_eq!(config.admin.address, None);
    }
}

#[test]
fn keyspaces_left_out_are_the_defaults_and_an_empty_list_is_none() {
    assert_eq!(
        parse("[log]\n").unwrap().keyspace,
        Config::default().keyspace
    );
    assert!(parse("keyspace = []\n").unwrap().keyspace.is_empty());
}

#[test]
fn the_documented_error_format() {
    let text = "[upstream]\nurl = \"redis://127.0.0.1:6379/0\"\n\n\n\n\n\n\n\n\n\ncommand_timeout = \"5 seconds\"\n";
    let errors = parse(text).unwrap_err();
    assert_eq!(
        errors.to_string(),
        "cachet.toml:12:1: upstream.command_timeout: invalid duration \"5 seconds\": \
         expected a number followed by ms, s, m or h"
    );
}

#[test]
fn unknown_key_in_a_section() {
    let errors = parse("[listen]\n  adress = \"127.0.0.1:1\"\n")
        .unwrap_err()
        .errors;
    assert_eq!(errors.len(), 1);
    let error = &errors[0];
    assert_eq!((error.line, error.column), (Some(2), Some(3)));
    assert_eq!(error.key, "listen.adress");
    assert!(
        error
            .message
            .starts_with("unknown field `adress`, expected one of `address`"),
        "{}",
        error.message
    );
}

#[test]
fn unknown_section_and_top_level_key() {
    assert_eq!(
        errors("[listen]\n[upsteam]\nurl = \"redis://h\"\n"),
        [
            "2: upsteam: unknown section; expected one of listen, upstream, limits, consistency, keyspace, commands, auth, admin, log"
        ]
    );
    assert_eq!(
        errors("address = \"x\"\n")[0],
        "1: address: unknown section; expected one of listen, upstream, limits, consistency, keyspace, commands, auth, admin, log"
    );
}

#[test]
fn unknown_sub_table() {
    assert_eq!(
        errors("[listen]\n[listen.tcp]\nkeepalive = \"x\"\n").len(),
        1
    );
    assert!(
        errors("[listen]\n[listen.tcp]\nkeepalive = \"x\"\n")[0]
            .starts_with("2: listen.tcp: unknown field `tcp`")
    );
}

#[test]
fn keys_of_a_nested_table_are_blamed_one_by_one() {
    let found = errors("[listen]\n[listen.tls]\ncert = \"x\"\nhandshake_timeout = 5\n");
    assert_eq!(found.len(), 4, "{found:#?}");
    assert!(found[0].starts_with("2: listen.tls.certificate: missing required key"));
    assert!(found[1].starts_with("2: listen.tls.key: missing required key"));
    assert!(found[2].starts_with("3: listen.tls.cert: unknown field `cert`"));
    assert!(found[3].starts_with("4: listen.tls.handshake_timeout: "));
}

#[test]
fn bad_duration_and_bad_size() {
    assert_eq!(
        errors("[consistency]\nlease_ttl = \"10\"\n[limits]\nmax_bulk_len = \"5 MiB\"\n"),
        [
            "2: consistency.lease_ttl: invalid duration \"10\": expected a number followed by ms, s, m or h",
            "4: limits.max_bulk_len: invalid size \"5 MiB\": expected a whole number of bytes, optionally followed by B, KiB, MiB or GiB",
        ]
    );
    assert_eq!(
        errors("[limits]\nmax_bulk_len = -5\n"),
        ["2: limits.max_bulk_len: invalid size -5: must not be negative"]
    );
}

#[test]
fn wrong_types() {
    assert_eq!(
        errors(
            "[listen]\nmax_clients = \"many\"\nidle_timeout = 5\n[log]\nformat = \"xml\"\n[admin]\naddress = 9180\n"
        ),
        [
            "2: listen.max_clients: invalid type: string \"many\", expected usize",
            "3: listen.idle_timeout: invalid type: integer `5`, expected a duration string such as \"10s\"",
            "5: log.format: unknown variant `xml`, expected `text` or `json`",
            "7: admin.address: invalid type: integer `9180`, expected an address string such as \"127.0.0.1:9180\", or \"off\"",
        ]
    );
    assert_eq!(
        errors("listen = 5\n"),
        ["1: listen: expected a table: [listen]"]
    );
    assert_eq!(
        errors("keyspace = 5\n"),
        ["1: keyspace: expected [[keyspace]] tables"]
    );
    assert_eq!(
        errors("[commands]\ndeny = [\"DEBUG\", 5]\n"),
        ["2: commands.deny: invalid type: integer `5`, expected a string"]
    );
}

#[test]
fn host_names_resolve_and_unix_sockets_are_paths() {
    let config = parse(
        "[listen]\naddress = \"localhost:6390\"\nunix_socket = \"/run/cachet/cachet.sock\"\nunix_socket_perm = 0o660\n",
    )
    .unwrap();
    assert!(config.listen.address.ip().is_loopback());
    assert_eq!(config.listen.address.port(), 6390);
    assert_eq!(
        config.listen.unix_socket.as_deref(),
        Some(std::path::Path::new("/run/cachet/cachet.sock"))
    );
    assert_eq!(config.listen.unix_socket_perm, Some(0o660));
    let errors = errors("[listen]\naddress = \"no-such-host.invalid:6380\"\n");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with(
            "2: listen.address: address \"no-such-host.invalid:6380\": cannot resolve the host name"
        ),
        "{errors:?}"
    );
}

#[test]
fn bad_addresses_and_urls() {
    assert_eq!(
        errors("[listen]\naddress = \"localhost:638000\"\n[upstream]\nurl = \"http://h\"\n"),
        [
            "2: listen.address: invalid address \"localhost:638000\": expected IP:port or host:port, such as \"127.0.0.1:6380\"",
            "4: upstream.url: invalid upstream URL: unsupported scheme \"http\": expected redis, rediss, redis+sentinel, redis+cluster or unix",
        ]
    );
    for (url, message) in [
        (
            "redis://h:99999/0",
            "invalid port \"99999\": expected 1 to 65535",
        ),
        (
            "redis://h/db1",
            "invalid database \"db1\": expected a number",
        ),
    ] {
        assert_eq!(
            errors(&format!("[upstream]\nurl = \"{url}\"\n")),
            [format!("2: upstream.url: invalid upstream URL: {message}")]
        );
    }
}

#[test]
fn keyspace_missing_required_keys() {
    assert_eq!(
        errors(
            "[[keyspace]]\npattern = \"a:*\"\nmode = \"cache\"\n\n[[keyspace]]\nmode = \"cache\"\n\n[[keyspace]]\nmax_ttl = \"1s\"\n"
        ),
        [
            "5: keyspace[1].pattern: missing required key",
            "8: keyspace[2].pattern: missing required key",
            "8: keyspace[2].mode: missing required key",
        ]
    );
}

#[test]
fn keyspace_bad_values() {
    assert_eq!(
        errors("[[keyspace]]\npattern = \"a:*\"\nmode = \"cached\"\nttl = \"1s\"\n"),
        [
            "3: keyspace[0].mode: unknown variant `cached`, expected one of `passthrough`, `strict`, `cache`, `lock`",
            "4: keyspace[0].ttl: unknown field `ttl`, expected one of `pattern`, `mode`, `max_ttl`, `hold_off`, `write_through`, `over_max_ttl`",
        ]
    );
    assert_eq!(
        errors(
            "keyspace = [\n{ pattern = \"a\", mode = \"lock\", max_ttl = \"forever\" },\n7,\n{ pattern = \"b\" },\n]\n"
        ),
        [
            "2: keyspace[0].max_ttl: invalid duration \"forever\": expected a number followed by ms, s, m or h",
            "3: keyspace[1]: expected a table with pattern and mode",
            "4: keyspace[2].mode: missing required key",
        ]
    );
}

#[test]
fn mode_specific_keys_on_the_wrong_mode() {
    assert_eq!(
        errors(
            r#"[[keyspace]]
pattern = "c:*"
mode = "cache"
max_ttl = "5s"

[[keyspace]]
pattern = "l:*"
mode = "lock"
hold_off = "1s"
write_through = "set"

[[keyspace]]
pattern = "p:*"
mode = "passthrough"
write_through = "invalidate"
over_max_ttl = "cap"
"#
        ),
        [
            "4: keyspace[0].max_ttl: only applies to mode = \"lock\", not \"cache\"",
            "9: keyspace[1].hold_off: only applies to mode = \"cache\", not \"lock\"",
            "10: keyspace[1].write_through: only applies to mode = \"cache\", not \"lock\"",
            "15: keyspace[2].write_through: only applies to mode = \"cache\", not \"passthrough\"",
            "16: keyspace[2].over_max_ttl: only applies to mode = \"lock\", not \"passthrough\"",
        ]
    );
}

#[test]
fn lock_max_ttl_defaults_and_must_be_positive() {
    let config = parse("[[keyspace]]\npattern = \"l:*\"\nmode = \"lock\"\n").unwrap();
    assert_eq!(config.keyspace[0].max_ttl, Some(Duration::from_secs(30)));
    assert_eq!(
        errors("[[keyspace]]\npattern = \"l:*\"\nmode = \"lock\"\nmax_ttl = \"0s\"\n"),
        ["4: keyspace[0].max_ttl: must be at least 1ms"]
    );
}

#[test]
fn unreachable_keyspace_rules() {
    assert_eq!(
        errors(
            r#"[[keyspace]]
pattern = "*"
mode = "strict"

[[keyspace]]
pattern = ":1:*"
mode = "cache"
"#
        ),
        ["6: keyspace[1].pattern: never matches: keyspace[0] pattern '*' matches every key first"]
    );
    assert_eq!(
        errors(
            r#"keyspace = [
  { pattern = "user:*", mode = "cache" },
  { pattern = "user:1:*", mode = "strict" },
  { pattern = "user", mode = "strict" },
  { pattern = "user", mode = "cache" },
]
"#
        ),
        [
            "3: keyspace[1].pattern: never matches: keyspace[0] pattern 'user:*' matches all of its keys first",
            "5: keyspace[3].pattern: never matches: keyspace[2] pattern 'user' matches all of its keys first",
        ]
    );
    // A catch-all is allowed, and not required.
    parse("[[keyspace]]\npattern = \"a*\"\nmode = \"cache\"\n").unwrap();
}

#[test]
fn range_and_combination_rules() {
    assert_eq!(
        errors(
            r#"[listen]
max_clients = 0
[upstream]
shared_connections = 65
connect_timeout = "0s"
[limits]
max_bulk_len = "1KiB"
max_inline_len = "2KiB"
max_multibulk_len = 0
[consistency]
invalidation_channel = ""
reserved_prefix = "{c}:"
lease_ttl = "0.5ms"
[[keyspace]]
pattern = ""
mode = "strict"
[commands]
deny = ["DEBUG", " "]
[admin]
address = "127.0.0.1:6380"
[log]
level = "infoo"
"#
        ),
        [
            "2: listen.max_clients: must be at least 1",
            "4: upstream.shared_connections: must be 1 to 64, not 65",
            "5: upstream.connect_timeout: must be greater than 0s",
            "8: limits.max_inline_len: 2048 bytes is more than limits.max_bulk_len (1024 bytes)",
            "9: limits.max_multibulk_len: must be greater than 0",
            "11: consistency.invalidation_channel: must not be empty",
            "12: consistency.reserved_prefix: must not contain '{' or '}' (cachet places a hash tag after it)",
            "13: consistency.lease_ttl: must be at least 1ms",
            "15: keyspace[0].pattern: must not be empty",
            "18: commands.deny: command names must not be empty",
            "20: admin.address: 127.0.0.1:6380 is already listen.address",
            "22: log.level: unknown level \"infoo\": expected trace, debug, info, warn, error or off, or a filter such as \"info,cachet=debug\"",
        ]
    );
}

#[test]
fn user_name_without_password() {
    assert_eq!(
        errors("[upstream]\nurl = \"redis://app@h\"\n"),
        ["2: upstream.url: a user name needs a password (upstream.password, or in the URL)"]
    );
    assert_eq!(
        errors("[upstream]\nusername = \"app\"\n"),
        ["2: upstream.username: a user name needs a password (upstream.password, or in the URL)"]
    );
    parse("[upstream]\nurl = \"redis://app@h\"\npassword = \"pw\"\n").unwrap();
}

#[test]
fn many_errors_in_one_file_all_reported_in_file_order() {
    let text = r#"# a broken file
[listen]
address = "127.0.0.1"
max_clients = 10

[upstream]
url = "redis://h:6379/x"
shared_connections = 0
command_timeout = "5 seconds"

[limits]
max_inline_len = "64KB"

[cluster]
nodes = 3

[[keyspace]]
pattern = "*"
mode = "strict"

[[keyspace]]
pattern = "a:*"
mode = "cache"
max_ttl = "1s"

[[keyspace]]
mode = "lock"

[log]
level = "loud"
"#;
    let errors = errors(text);
    assert_eq!(
        errors,
        [
            "3: listen.address: invalid address \"127.0.0.1\": expected IP:port or host:port, such as \"127.0.0.1:6380\"",
            "7: upstream.url: invalid upstream URL: invalid database \"x\": expected a number",
            "8: upstream.shared_connections: must be 1 to 64, not 0",
            "9: upstream.command_timeout: invalid duration \"5 seconds\": expected a number followed by ms, s, m or h",
            "14: cluster: unknown section; expected one of listen, upstream, limits, consistency, keyspace, commands, auth, admin, log",
            "22: keyspace[1].pattern: never matches: keyspace[0] pattern '*' matches every key first",
            "24: keyspace[1].max_ttl: only applies to mode = \"lock\", not \"cache\"",
            "26: keyspace[2].pattern: missing required key",
            "30: log.level: unknown level \"loud\": expected trace, debug, info, warn, error or off, or a filter such as \"info,cachet=debug\"",
        ],
        "{errors:#?}"
    );
}

#[test]
fn semantic_errors_are_not_judged_against_defaults_that_replaced_bad_values() {
    // max_bulk_len is unreadable; comparing max_inline_len with the default 512MiB
    // would be an error about a value the operator never wrote.
    assert_eq!(
        errors("[limits]\nmax_bulk_len = \"lots\"\nmax_inline_len = \"1GiB\"\n").len(),
        1
    );
    // Other keys are still checked, in the same section too.
    assert_eq!(
        errors("[limits]\nmax_bulk_len = \"lots\"\nmax_multibulk_len = 0\n[upstream]\nshared_connections = 0\n").len(),
        3
    );
    // A mode that cannot be read says nothing about which keys the entry may have.
    assert_eq!(
        errors("[[keyspace]]\npattern = \"a\"\nmode = \"lok\"\nmax_ttl = \"1s\"\n").len(),
        1
    );
    assert_eq!(
        errors("[admin]\naddress = \"127.0.0.1:6380\"\n[listen]\naddress = \"nowhere\"\n").len(),
        1
    );
}

#[test]
fn a_syntax_error_is_reported_with_its_line() {
    let errors = parse("[listen]\nmax_clients = 10\naddress = \"127.0.0.1:1\n")
        .unwrap_err()
        .errors;
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].line, Some(3));
    assert_eq!(errors[0].key, "");
    assert!(!errors[0].message.is_empty());
    assert!(!errors[0].message.contains('\n'));

    let errors = parse("[listen]\nmax_clients = 1\nmax_clients = 2\n")
        .unwrap_err()
        .errors;
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].line, Some(3));
}

#[test]
fn validate_after_overrides_has_keys_but_no_lines() {
    let mut config = Config::default();
    config.upstream.shared_connections = 0;
    config.keyspace[1].write_through = Some(WriteThrough::Set);
    config.keyspace[2].write_through = Some(WriteThrough::Set);
    config.log.level = "chatty".into();
    let errors = config.validate().unwrap_err();
    assert_eq!(
        errors.to_string(),
        "upstream.shared_connections: must be 1 to 64, not 0\n\
         keyspace[2].write_through: only applies to mode = \"cache\", not \"lock\"\n\
         log.level: unknown level \"chatty\": expected trace, debug, info, warn, error or off, or a filter such as \"info,cachet=debug\""
    );
    assert!(
        errors
            .errors
            .iter()
            .all(|e| e.line.is_none() && e.origin.is_empty())
    );
    let labelled = errors.with_origin("--set");
    assert!(
        labelled
            .to_string()
            .starts_with("--set: upstream.shared_connections")
    );
}

#[test]
fn load_reads_a_file_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[listen]\nmax_clients = 0\n").unwrap();
    let error = Config::load(&path).unwrap_err().to_string();
    assert_eq!(
        error,
        format!(
            "{}:2:1: listen.max_clients: must be at least 1",
            path.display()
        )
    );

    let missing = dir.path().join("missing.toml");
    let error = Config::load(&missing).unwrap_err().to_string();
    assert!(
        error.starts_with(&format!(
            "{}: cannot read the configuration: ",
            missing.display()
        )),
        "{error}"
    );

    std::fs::write(&path, SHIPPED).unwrap();
    assert_eq!(Config::load(&path).unwrap(), Config::default());
}

#[test]
fn debug_output_hides_passwords() {
    let config =
        parse("[upstream]\nurl = \"redis://u:in-url@h\"\npassword = \"in-field\"\n").unwrap();
    let debug = format!("{config:?}");
    assert!(
        !debug.contains("in-url") && !debug.contains("in-field"),
        "{debug}"
    );
    assert_eq!(config.upstream.password(), Some("in-field"));
}

const DIGEST: &str = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b";

#[test]
fn auth_and_command_policy_are_read() {
    let config = parse(&format!(
        r#"
[commands]
rename = {{ config = "", FlushAll = "myflush" }}
scripts = "refuse"

[auth]
password_sha256 = "{DIGEST}"

[[auth.users]]
name = "app"
password_sha256 = "{upper}"
"#,
        upper = DIGEST.to_uppercase()
    ))
    .unwrap();
    let rename: Vec<(&str, &str)> = config
        .commands
        .rename
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    assert_eq!(rename, [("CONFIG", ""), ("FLUSHALL", "MYFLUSH")]);
    assert_eq!(config.commands.scripts, ScriptPolicy::Refuse);
    let auth = config.auth.as_ref().unwrap();
    assert_eq!(auth.password_sha256.as_deref(), Some(DIGEST));
    assert_eq!(auth.users.len(), 1);
    assert_eq!(auth.users[0].name, "app");
    // Digests stay out of logs, user names do not.
    let debug = format!("{config:?}");
    assert!(!debug.contains(DIGEST) && debug.contains("app"), "{debug}");
    assert_eq!(Config::default().auth, None);
}

#[test]
fn auth_errors_name_line_and_key() {
    assert_eq!(
        errors(
            "[auth]\npassword_sha256 = \"hunter2\"\n[[auth.users]]\nname = \"default\"\npassword_sha256 = \"{DIGEST}\"\n[[auth.users]]\nname = \"app\"\npassword_sha256 = \"xyz\"\n"
                .replace("{DIGEST}", DIGEST)
                .as_str()
        ),
        [
            "2: auth.password_sha256: must be a SHA-256 digest written as 64 hex digits (not the password; for example the output of `printf %s 'password' | sha256sum`), got 7 characters",
            "4: auth.users[0].name: the default user's password is auth.password_sha256",
            "8: auth.users[1].password_sha256: must be a SHA-256 digest written as 64 hex digits (not the password; for example the output of `printf %s 'password' | sha256sum`), got 3 characters",
        ]
    );
    assert_eq!(
        errors("[auth]\n"),
        [
            "1: auth: sets no password: give password_sha256 (or password_sha256_file) or at least one [[auth.users]] (without an [auth] section clients are not asked to authenticate)"
        ]
    );
    let twice = format!(
        "[[auth.users]]\nname = \"a\"\npassword_sha256 = \"{DIGEST}\"\n[[auth.users]]\nname = \"a\"\npassword_sha256 = \"{DIGEST}\"\n"
    );
    assert_eq!(
        errors(&twice),
        ["5: auth.users[1].name: user \"a\" is listed twice"]
    );
    let unknown = errors("[auth]\npassword = \"plain\"\n");
    assert_eq!(unknown.len(), 2, "{unknown:?}");
    // The unknown key, and the section left without any password.
    assert!(
        unknown[0].starts_with("1: auth: sets no password"),
        "{unknown:?}"
    );
    assert!(
        unknown[1].starts_with("2: auth.password: unknown field `password`"),
        "{unknown:?}"
    );
    let missing = errors("[[auth.users]]\nname = \"a\"\n");
    assert!(
        missing[0].contains("auth.users") && missing[0].contains("password_sha256"),
        "{missing:?}"
    );
}

#[test]
fn auth_digests_may_come_from_files_read_at_every_load() {
    let dir = tempfile::tempdir().unwrap();
    let digest = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8";
    let file = dir.path().join("digest");
    std::fs::write(&file, format!("{digest}\n")).unwrap();
    let text = format!(
        "[auth]\npassword_sha256_file = \"{0}\"\n\n[[auth.users]]\nname = \"app\"\npassword_sha256_file = \"{0}\"\n",
        file.display()
    );
    let config = parse(&text).unwrap();
    let auth = config.auth.as_ref().unwrap();
    assert_eq!(auth.password_sha256.as_deref(), Some(digest));
    assert_eq!(auth.users[0].password_sha256, digest);
    // Never shown: the digest is as good as a weak password.
    assert!(!format!("{config:?}").contains(digest));

    // A rotated file is read again.
    let other = "a".repeat(64);
    std::fs::write(&file, &other).unwrap();
    let config = parse(&text).unwrap();
    assert_eq!(config.auth.unwrap().password_sha256, Some(other));

    let missing = dir.path().join("missing");
    let unread = errors(&format!(
        "[auth]\npassword_sha256_file = \"{}\"\n",
        missing.display()
    ));
    assert_eq!(unread.len(), 1, "{unread:?}");
    assert!(
        unread[0].starts_with("2: auth.password_sha256_file: cannot read "),
        "{unread:?}"
    );
    std::fs::write(&file, "the password itself\n").unwrap();
    let not_digests = errors(&text);
    assert_eq!(not_digests.len(), 2, "{not_digests:?}");
    assert!(not_digests[0].contains("auth.password_sha256_file: "));
    assert!(not_digests[0].contains("must be a SHA-256 digest"));
    assert!(not_digests[1].contains("auth.users[0].password_sha256_file: "));
    assert_eq!(
        errors(&format!(
            "[auth]\npassword_sha256 = \"{digest}\"\npassword_sha256_file = \"{}\"\n",
            file.display()
        )),
        ["3: auth.password_sha256_file: give the digest or a file holding it, not both"]
    );
}

#[test]
fn unix_socket_settings_are_checked() {
    assert_eq!(
        errors("[listen]\nunix_socket = \"/run/c.sock\"\nunix_socket_perm = 660\n"),
        [
            "3: listen.unix_socket_perm: must be at most 0o777 (write it in octal, such as 0o660), not 0o1224"
        ]
    );
    assert_eq!(
        errors(
            "[listen]\nunix_socket = \"/run/r.sock\"\n[upstream]\nurl = \"unix:///run/r.sock\"\n"
        ),
        ["2: listen.unix_socket: is the upstream's own socket (upstream.url)"]
    );
}
