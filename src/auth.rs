//! `[auth]`: client authentication answered by cachet itself, as Redis answers it with
//! `requirepass` and ACL users. Passwords are known only as SHA-256 digests; a
//! password a client sends is hashed and compared in constant time, and never logged.
//!
//! The session keeps whether it is authenticated; this holds the credentials (swapped
//! whole by a reload: a new password applies to new `AUTH` attempts, sessions already
//! authenticated stay so, as in Redis), and for each user the upstream user its
//! commands run as (`upstream_user`; cachet's own when unset).

use std::collections::HashMap;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::command::{CommandInfo, CommandKind, CommandTable};
use crate::config::AuthConfig;
use crate::resp::reply;

type Sha = [u8; 32];

/// `-NOAUTH` for any command but `AUTH`, `HELLO`, `QUIT` and `RESET` before
/// authenticating.
pub const NOAUTH: &[u8] = b"-NOAUTH Authentication required.\r\n";
/// A failed `AUTH` (unknown user, wrong password, user without a password).
pub const WRONGPASS: &[u8] = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n";
/// `HELLO` without `AUTH` before authenticating.
pub const NOAUTH_HELLO: &[u8] = b"-NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time\r\n";

#[derive(Debug, Clone, Default)]
pub struct Auth {
    /// `None`: no `[auth]` section; cachet does not authenticate clients.
    users: Option<Users>,
}

#[derive(Debug, Clone)]
struct Users {
    default: Option<Local>,
    named: HashMap<Vec<u8>, Local>,
}

/// One local user: its password's digest and who its commands run as upstream.
#[derive(Debug, Clone)]
struct Local {
    sha: Sha,
    runs_as: RunsAs,
}

/// The upstream user a local user's commands run as.
#[derive(Clone, PartialEq, Eq)]
pub enum RunsAs {
    /// cachet's own upstream user (no `upstream_user`).
    Own,
    /// `upstream_user` and the password read from `upstream_password_file`.
    User { name: Bytes, password: Bytes },
    /// `upstream_user` whose password file could not be read: the user cannot log in
    /// (running as cachet's own user would give it rights it was not meant to have).
    Unreadable(String),
}

impl std::fmt::Debug for RunsAs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunsAs::Own => f.write_str("Own"),
            RunsAs::User { name, .. } => write!(f, "User({})", String::from_utf8_lossy(name)),
            RunsAs::Unreadable(e) => write!(f, "Unreadable({e})"),
        }
    }
}

fn runs_as(user: Option<&str>, file: Option<&std::path::Path>) -> RunsAs {
    let (Some(name), Some(file)) = (user, file) else {
        return RunsAs::Own;
    };
    match read_password(file) {
        Ok(password) => RunsAs::User {
            name: Bytes::copy_from_slice(name.as_bytes()),
            password,
        },
        Err(e) => RunsAs::Unreadable(e),
    }
}

/// A password file's first line (a trailing newline is not part of the password).
fn read_password(file: &std::path::Path) -> Result<Bytes, String> {
    let text = std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let line = text.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    Ok(Bytes::copy_from_slice(line))
}

/// Password files (`[upstream] password_file`, `[auth]`'s) must be readable: checked
/// when the configuration loads.
pub fn check(config: &crate::Config) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Err(e) = config.upstream.resolved_password() {
        out.push(("upstream.password_file".to_owned(), e));
    }
    let Some(auth) = &config.auth else {
        return out;
    };
    if let Some(file) = &auth.upstream_password_file
        && let Err(e) = read_password(file)
    {
        out.push(("auth.upstream_password_file".to_owned(), e));
    }
    for (i, user) in auth.users.iter().enumerate() {
        if let Some(file) = &user.upstream_password_file
            && let Err(e) = read_password(file)
        {
            out.push((format!("auth.users[{i}].upstream_password_file"), e));
        }
    }
    out
}

impl Auth {
    /// From `[auth]`; digests were validated by the configuration loader (one that is
    /// not 64 hex digits matches no password).
    pub fn new(config: Option<&AuthConfig>) -> Auth {
        let users = config.map(|c| Users {
            default: c.password_sha256.as_deref().map(|sha| Local {
                sha: parse_hex(sha),
                runs_as: runs_as(
                    c.upstream_user.as_deref(),
                    c.upstream_password_file.as_deref(),
                ),
            }),
            named: c
                .users
                .iter()
                .map(|u| {
                    let local = Local {
                        sha: parse_hex(&u.password_sha256),
                        runs_as: runs_as(
                            u.upstream_user.as_deref(),
                            u.upstream_password_file.as_deref(),
                        ),
                    };
                    (u.name.as_bytes().to_vec(), local)
                })
                .collect(),
        });
        Auth { users }
    }

    /// Whether clients must authenticate with cachet.
    pub fn enabled(&self) -> bool {
        self.users.is_some()
    }

    /// Checks `AUTH [user] password`: `user` `None` or `default` is the default user.
    pub fn check(&self, user: Option<&[u8]>, password: &[u8]) -> bool {
        self.login(user, password).is_some()
    }

    /// Checks `AUTH [user] password` and says who the user's commands run as upstream.
    pub fn login(&self, user: Option<&[u8]>, password: &[u8]) -> Option<&RunsAs> {
        let users = self.users.as_ref()?;
        let local = match user {
            None | Some(b"default") => users.default.as_ref(),
            Some(name) => users.named.get(name),
        };
        let expected = local.map(|l| l.sha);
        let given: Sha = Sha256::digest(password).into();
        // Hash and compare even for an unknown user, so the bulk of the work takes
        // the same time either way. The name lookup itself is not constant-time (a
        // hash of the name, then comparing it with the few names in its bucket): a
        // difference of nanoseconds that network jitter hides, not one this removes.
        let equal = constant_time_eq(&given, &expected.unwrap_or([0xff; 32]));
        if equal {
            local.map(|l| &l.runs_as)
        } else {
            None
        }
    }

    /// `AUTH`'s reply: arity and syntax as Redis checks them, then the credentials.
    /// `Ok` carries who the user runs as upstream.
    pub fn auth_command(&self, args: &[Bytes]) -> Result<RunsAs, Bytes> {
        let (user, password) = match args {
            [_, password] => (None, password),
            [_, user, password] => (Some(&user[..]), password),
            [_] | [] => return Err(reply::wrong_arity("auth")),
            _ => return Err(reply::error("ERR syntax error")),
        };
        self.login(user, password)
            .cloned()
            .ok_or_else(|| Bytes::from_static(WRONGPASS))
    }
}

/// What a client that has not logged in gets for a command, in Redis's order: an
/// unknown command or subcommand and a wrong number of arguments are reported before
/// the missing login; `None` for the commands Redis runs without one (`AUTH`,
/// `HELLO`, `QUIT`, `RESET`).
pub fn before_login(
    table: &CommandTable,
    info: Option<&CommandInfo>,
    args: &[Bytes],
) -> Option<Bytes> {
    use CommandKind as K;
    let Some(info) = info else {
        return Some(crate::policy::unknown_command(args));
    };
    if table.unknown_subcommand(args) {
        return Some(crate::policy::unknown_subcommand(args));
    }
    if !info.arity_ok(args.len()) {
        return Some(reply::wrong_arity(&info.name));
    }
    match info.kind {
        K::Auth | K::Hello | K::Quit | K::Reset => None,
        _ => Some(Bytes::from_static(NOAUTH)),
    }
}

fn constant_time_eq(a: &Sha, b: &Sha) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn parse_hex(hex: &str) -> Sha {
    let mut out = [0u8; 32];
    let digits = hex.as_bytes();
    for (i, byte) in out.iter_mut().enumerate() {
        let pair = digits
            .get(2 * i..2 * i + 2)
            .and_then(|p| std::str::from_utf8(p).ok())
            .and_then(|p| u8::from_str_radix(p, 16).ok());
        match pair {
            Some(b) => *byte = b,
            // Not a digest: a value no password hashes to in practice, checked by the
            // loader anyway.
            None => return [0xff; 32],
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::AuthUser;

    fn sha_hex(s: &str) -> String {
        Sha256::digest(s.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[test]
    fn checks_default_and_named_users() {
        let config = AuthConfig {
            password_sha256: Some(sha_hex("secret")),
            users: vec![AuthUser {
                name: "app".into(),
                password_sha256: sha_hex("app-pass").to_uppercase(),
                password_sha256_file: None,
                upstream_user: None,
                upstream_password_file: None,
            }],
            ..AuthConfig::default()
        };
        let auth = Auth::new(Some(&config));
        assert!(auth.enabled());
        assert!(auth.check(None, b"secret"));
        assert!(auth.check(Some(b"default"), b"secret"));
        assert!(auth.check(Some(b"app"), b"app-pass"));
        assert!(!auth.check(Some(b"app"), b"secret"));
        assert!(!auth.check(None, b"wrong"));
        assert!(!auth.check(Some(b"nobody"), b"secret"));
        let bytes = |s: &str| Bytes::copy_from_slice(s.as_bytes());
        assert_eq!(
            auth.auth_command(&[bytes("AUTH")]).unwrap_err(),
            Bytes::from("-ERR wrong number of arguments for 'auth' command\r\n")
        );
        assert_eq!(
            auth.auth_command(&[bytes("AUTH"), bytes("a"), bytes("b"), bytes("c")])
                .unwrap_err(),
            Bytes::from("-ERR syntax error\r\n")
        );
        assert_eq!(
            auth.auth_command(&[bytes("AUTH"), bytes("x")]).unwrap_err(),
            Bytes::from_static(WRONGPASS)
        );
        assert_eq!(
            auth.auth_command(&[bytes("AUTH"), bytes("secret")])
                .unwrap(),
            RunsAs::Own
        );
    }

    #[test]
    fn before_login_order_is_redis() {
        let table = CommandTable::builtin();
        let check = |line: &str| {
            let args: Vec<Bytes> = line
                .split(' ')
                .map(|a| Bytes::copy_from_slice(a.as_bytes()))
                .collect();
            before_login(&table, table.lookup(&args).map(|i| &**i), &args)
        };
        assert_eq!(check("GET k"), Some(Bytes::from_static(NOAUTH)));
        assert_eq!(
            check("GET"),
            Some(Bytes::from(
                "-ERR wrong number of arguments for 'get' command\r\n"
            ))
        );
        assert_eq!(
            check("config nosuch"),
            Some(Bytes::from(
                "-ERR unknown subcommand 'nosuch'. Try CONFIG HELP.\r\n"
            ))
        );
        assert!(
            check("NOSUCH x")
                .unwrap()
                .starts_with(b"-ERR unknown command 'NOSUCH'")
        );
        for allowed in ["AUTH x", "auth u p", "HELLO", "QUIT", "RESET"] {
            assert_eq!(check(allowed), None, "{allowed}");
        }
    }

    #[test]
    fn without_a_default_password_only_named_users_log_in() {
        let config = AuthConfig {
            password_sha256: None,
            users: vec![AuthUser {
                name: "app".into(),
                password_sha256: sha_hex(""),
                password_sha256_file: None,
                upstream_user: None,
                upstream_password_file: None,
            }],
            ..AuthConfig::default()
        };
        let auth = Auth::new(Some(&config));
        assert!(!auth.check(None, b""));
        assert!(auth.check(Some(b"app"), b""));
        assert!(!Auth::default().enabled());
        assert!(!Auth::default().check(None, b""));
    }

    #[test]
    fn users_run_as_their_upstream_user() {
        let dir = std::env::temp_dir().join(format!("cachet-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("app.pass");
        std::fs::write(&file, "up-secret\n").unwrap();
        let config = AuthConfig {
            password_sha256: None,
            users: vec![
                AuthUser {
                    name: "app".into(),
                    password_sha256: sha_hex("p"),
                    password_sha256_file: None,
                    upstream_user: Some("app_rw".into()),
                    upstream_password_file: Some(file.clone()),
                },
                AuthUser {
                    name: "broken".into(),
                    password_sha256: sha_hex("p"),
                    password_sha256_file: None,
                    upstream_user: Some("x".into()),
                    upstream_password_file: Some(dir.join("missing")),
                },
            ],
            ..AuthConfig::default()
        };
        let auth = Auth::new(Some(&config));
        assert_eq!(
            auth.login(Some(b"app"), b"p"),
            Some(&RunsAs::User {
                name: Bytes::from("app_rw"),
                password: Bytes::from("up-secret"),
            })
        );
        assert!(matches!(
            auth.login(Some(b"broken"), b"p"),
            Some(RunsAs::Unreadable(_))
        ));
        assert_eq!(auth.login(Some(b"app"), b"wrong"), None);
        let whole = crate::Config {
            auth: Some(config),
            ..crate::Config::default()
        };
        let errors: Vec<String> = check(&whole).into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            errors,
            vec!["auth.users[1].upstream_password_file".to_owned()]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
