//! `[commands]`: what clients may run. Renamed and disabled commands (Redis's
//! `rename-command`), the deny list, and refusing scripts. Swapped whole by a reload;
//! a session reads it once per batch of commands.

use std::collections::{HashMap, HashSet};

use bytes::{BufMut, Bytes, BytesMut};

use crate::config::{CommandsConfig, ScriptPolicy};
use crate::resp::{Request, reply};

/// Script commands `[commands] scripts = "refuse"` refuses, by command-table name.
const SCRIPT_COMMANDS: &[&str] = &[
    "eval",
    "evalsha",
    "eval_ro",
    "evalsha_ro",
    "fcall",
    "fcall_ro",
    "script|load",
    "function|load",
];

/// Command names up to this length are lowercased without allocating (the longest
/// Redis command name is 20 bytes).
const NAME_BUF: usize = 32;

#[derive(Debug, Clone, Default)]
pub struct Policy {
    deny: DenyList,
    /// Lowercase name a client sends -> what it means: `Some(original)` for a new
    /// name, `None` for an original name renamed away or disabled.
    renamed: HashMap<Vec<u8>, Option<Bytes>>,
    refuse_scripts: bool,
}

/// What the rename table makes of a request.
pub enum Renamed {
    /// Runs as sent (or under its original name, rewritten).
    Run(Request),
    /// The name is gone: Redis's unknown-command error.
    Unknown(Bytes),
}

impl Policy {
    pub fn new(config: &CommandsConfig) -> Policy {
        let mut renamed = HashMap::new();
        // Two passes: every original name goes first, then every new name, so a new
        // name that is itself renamed away (a swap, `GET = "SET"` and `SET = "GET"`,
        // or a chain, `DEBUG = "FLUSHALL"` and `FLUSHALL = ""`) ends up meaning its
        // original whatever the order of the keys.
        for from in config.rename.keys() {
            renamed.insert(from.to_ascii_lowercase().into_bytes(), None);
        }
        for (from, to) in &config.rename {
            if !to.is_empty() {
                let original = Bytes::from(from.to_ascii_uppercase());
                renamed.insert(to.to_ascii_lowercase().into_bytes(), Some(original));
            }
        }
        Policy {
            deny: DenyList::new(&config.deny),
            renamed,
            refuse_scripts: config.scripts == ScriptPolicy::Refuse,
        }
    }

    /// Applies `[commands] rename` to a request's command name.
    pub fn rename(&self, req: Request) -> Renamed {
        if self.renamed.is_empty() {
            return Renamed::Run(req);
        }
        let Some(first) = req.args.first() else {
            return Renamed::Run(req);
        };
        // Lowercased on the stack: a rename table is consulted for every command.
        let mut buf = [0u8; NAME_BUF];
        let found = match buf.get_mut(..first.len()) {
            Some(lower) => {
                lower.copy_from_slice(first);
                lower.make_ascii_lowercase();
                self.renamed.get(&*lower)
            }
            None => self.renamed.get(&first.to_ascii_lowercase()),
        };
        match found {
            None => Renamed::Run(req),
            Some(None) => Renamed::Unknown(unknown_command(&req.args)),
            Some(Some(original)) => {
                let args = std::iter::once(original.clone()).chain(req.args.into_iter().skip(1));
                Renamed::Run(Request::from_args(args.collect::<Vec<_>>()))
            }
        }
    }

    /// Whether no command is renamed or disabled ([`rename`](Self::rename) runs
    /// every request as sent).
    pub fn renames_nothing(&self) -> bool {
        self.renamed.is_empty()
    }

    /// The refusal of a command by the deny list or the script policy; `first` is the
    /// name as sent, `table_name` the command table's (`script|load`).
    pub fn refusal(&self, first: &[u8], table_name: Option<&str>) -> Option<Bytes> {
        // Nothing denied and scripts allowed (the default): asked of every command.
        if self.deny.names.is_empty() && !self.refuse_scripts {
            return None;
        }
        let sent = || String::from_utf8_lossy(first).into_owned();
        if self.deny.denies(first, table_name) {
            return Some(reply::error(&format!(
                "ERR command '{}' is denied by cachet configuration",
                sent()
            )));
        }
        let name = table_name?;
        if self.refuse_scripts && SCRIPT_COMMANDS.contains(&name) {
            let shown = name.replace('|', " ").to_ascii_uppercase();
            return Some(reply::error(&format!(
                "ERR command '{shown}' is refused: cachet configuration does not allow \
                 scripts ([commands] scripts = \"refuse\")"
            )));
        }
        None
    }
}

/// Redis's reply to a command name it does not know (renamed away, or disabled):
/// `-ERR unknown command 'X', with args beginning with: 'a' 'b' `, with the name cut
/// at 128 bytes and the arguments shown up to 128 bytes in all, as Redis does.
pub fn unknown_command(args: &[Bytes]) -> Bytes {
    const LIMIT: usize = 128;
    let name = args.first().map_or(&b""[..], |a| &a[..]);
    let mut shown = Vec::new();
    for arg in args.iter().skip(1) {
        if shown.len() >= LIMIT {
            break;
        }
        let room = LIMIT - shown.len();
        shown.push(b'\'');
        shown.extend_from_slice(arg.get(..arg.len().min(room)).unwrap_or_default());
        shown.extend_from_slice(b"' ");
    }
    let mut out = BytesMut::with_capacity(64 + shown.len());
    out.put_slice(b"-ERR unknown command '");
    out.put_slice(name.get(..name.len().min(LIMIT)).unwrap_or_default());
    out.put_slice(b"', with args beginning with: ");
    out.put_slice(&shown);
    // An error is one line: Redis turns line breaks into spaces.
    for b in out.iter_mut() {
        if *b == b'\r' || *b == b'\n' {
            *b = b' ';
        }
    }
    out.put_slice(b"\r\n");
    out.freeze()
}

/// Redis's reply to a container command with a subcommand it lacks:
/// `-ERR unknown subcommand 'FOO'. Try CONFIG HELP.`
pub fn unknown_subcommand(args: &[Bytes]) -> Bytes {
    let cut = |a: Option<&Bytes>| {
        let a = a.map_or(&b""[..], |a| &a[..]);
        String::from_utf8_lossy(a.get(..a.len().min(128)).unwrap_or_default()).into_owned()
    };
    reply::error(&format!(
        "ERR unknown subcommand '{}'. Try {} HELP.",
        cut(args.get(1)),
        cut(args.first()).to_ascii_uppercase()
    ))
}

/// `[commands] deny`: command names refused with an error, lowercase as in the command
/// table (`flushall`; a subcommand as `config|set`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DenyList {
    names: HashSet<String>,
}

impl DenyList {
    /// From the configuration's entries (`FLUSHALL`, `CONFIG|SET` or `CONFIG SET`).
    pub fn new(entries: &[String]) -> DenyList {
        DenyList {
            names: entries
                .iter()
                .map(|e| e.to_ascii_lowercase().replace(' ', "|"))
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Whether a command is denied: by its top-level name (`args[0]`), or by its full
    /// name in the command table (`config|set`).
    pub fn denies(&self, first: &[u8], table_name: Option<&str>) -> bool {
        if self.names.is_empty() {
            return false;
        }
        if let Some(name) = table_name {
            if self.names.contains(name) {
                return true;
            }
            if let Some((container, _)) = name.split_once('|') {
                return self.names.contains(container);
            }
            return false;
        }
        std::str::from_utf8(first)
            .map(|f| self.names.contains(&f.to_ascii_lowercase()))
            .unwrap_or(false)
    }
}

/// `[commands] rename`, as Redis's `rename-command`: each new name once, and not the
/// name of a command that is still there under its own name (a
/// [`Check`](crate::config::Check) for the loader).
pub fn check(config: &crate::config::Config) -> Vec<(String, String)> {
    let renames = &config.commands.rename;
    let mut out = Vec::new();
    let mut fail = |key: String, message: String| out.push((key, message));
    if renames.is_empty() {
        return out;
    }
    let builtin = crate::command::CommandTable::builtin();
    let mut taken = std::collections::HashSet::new();
    for (from, to) in renames {
        let key = format!("commands.rename.{from}");
        if from.contains('|') || to.contains('|') {
            fail(
                key,
                "only whole commands can be renamed, not subcommands".into(),
            );
            continue;
        }
        if to.is_empty() {
            continue;
        }
        if !taken.insert(to.as_str()) {
            fail(key, format!("{to} is the new name of another command too"));
        } else if to != from
            && !renames.contains_key(to)
            && builtin.get(&to.to_ascii_lowercase()).is_some()
        {
            fail(key, format!("{to} is already a Redis command"));
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<Bytes> {
        Request::from_args(s.split(' ')).args
    }

    #[test]
    fn unknown_command_text_is_redis() {
        assert_eq!(
            unknown_command(&args("FOO a b")),
            Bytes::from("-ERR unknown command 'FOO', with args beginning with: 'a' 'b' \r\n")
        );
        assert_eq!(
            unknown_command(&args("FLUSHALL")),
            Bytes::from("-ERR unknown command 'FLUSHALL', with args beginning with: \r\n")
        );
        let long = unknown_command(&[Bytes::from("x"), Bytes::from(vec![b'a'; 300])]);
        assert_eq!(
            long.len(),
            "-ERR unknown command 'x', with args beginning with: ".len() + 128 + 3 + 2
        );
    }

    #[test]
    fn renames_and_refusals() {
        let mut config = CommandsConfig::default();
        config.rename.insert("FLUSHALL".into(), "MYFLUSH".into());
        config.rename.insert("CONFIG".into(), String::new());
        config.scripts = ScriptPolicy::Refuse;
        let policy = Policy::new(&config);
        let run = |s: &str| match policy.rename(Request::from_args(args(s))) {
            Renamed::Run(r) => Ok(r.args),
            Renamed::Unknown(e) => Err(e),
        };
        assert_eq!(run("myflush async").unwrap(), args("FLUSHALL async"));
        assert_eq!(run("GET k").unwrap(), args("GET k"));
        assert!(run("flushall").is_err());
        assert!(run("config get x").is_err());
        assert!(policy.refusal(b"eval", Some("eval")).is_some());
        assert!(
            policy
                .refusal(b"script", Some("script|load"))
                .unwrap()
                .starts_with(b"-ERR command 'SCRIPT LOAD' is refused")
        );
        assert!(policy.refusal(b"script", Some("script|exists")).is_none());
        assert!(Policy::default().refusal(b"eval", Some("eval")).is_none());
    }

    fn run_with(policy: &Policy, s: &str) -> Result<Vec<Bytes>, Bytes> {
        match policy.rename(Request::from_args(args(s))) {
            Renamed::Run(r) => Ok(r.args),
            Renamed::Unknown(e) => Err(e),
        }
    }

    #[test]
    fn swapped_and_chained_renames_mean_their_originals() {
        let mut config = CommandsConfig::default();
        config.rename.insert("GET".into(), "SET".into());
        config.rename.insert("SET".into(), "GET".into());
        let policy = Policy::new(&config);
        assert_eq!(run_with(&policy, "set k").unwrap(), args("GET k"));
        assert_eq!(run_with(&policy, "GET k v").unwrap(), args("SET k v"));

        // The renamed command sorts before the one it takes the name of, and after it.
        for (from, to) in [("DEBUG", "FLUSHALL"), ("ZZZ", "FLUSHALL")] {
            let mut config = CommandsConfig::default();
            config.rename.insert(from.into(), to.into());
            config.rename.insert("FLUSHALL".into(), String::new());
            let policy = Policy::new(&config);
            let mut want = args(from);
            want.push(Bytes::from("x"));
            assert_eq!(run_with(&policy, "flushall x").unwrap(), want, "{from}");
            assert!(run_with(&policy, from).is_err(), "{from}");
        }
    }

    #[test]
    fn long_and_odd_names_are_looked_up_too() {
        let long = "X".repeat(NAME_BUF + 5);
        let mut config = CommandsConfig::default();
        config.rename.insert("FLUSHALL".into(), long.clone());
        config.rename.insert("CONFIG".into(), "C\u{e9}".into());
        let policy = Policy::new(&config);
        let lower = long.to_ascii_lowercase();
        assert_eq!(run_with(&policy, &lower).unwrap(), args("FLUSHALL"));
        assert_eq!(
            run_with(&policy, "c\u{e9} get x").unwrap(),
            args("CONFIG get x")
        );
        let exact = "Y".repeat(NAME_BUF);
        assert_eq!(run_with(&policy, &exact).unwrap(), args(&exact));
        assert!(matches!(
            policy.rename(Request::from_args(Vec::<Bytes>::new())),
            Renamed::Run(_)
        ));
    }
}

#[cfg(test)]
mod check_tests {
    use super::{DenyList, check};

    /// Problems of `text` with the rename check, as `line: key: message`.
    fn errors(text: &str) -> Vec<String> {
        match crate::config::Config::parse_with(text, "", &[check]) {
            Ok(_) => Vec::new(),
            Err(e) => e
                .errors
                .iter()
                .map(|e| format!("{}: {}: {}", e.line.unwrap_or(0), e.key, e.message))
                .collect(),
        }
    }

    #[test]
    fn rename_errors() {
        assert_eq!(
            errors(
                "[commands]\nrename = { CONFIG = \"GET\", FLUSHALL = \"X\", FLUSHDB = \"x\", \"CLIENT|KILL\" = \"\", SCRIPT = \"a b\" }\nscripts = \"maybe\"\n"
            ),
            [
                "2: commands.rename.CONFIG: GET is already a Redis command",
                "2: commands.rename.FLUSHDB: X is the new name of another command too",
                "2: commands.rename.CLIENT|KILL: only whole commands can be renamed, not subcommands",
                "2: commands.rename.SCRIPT: invalid command name \"a b\": command names contain no spaces",
                "3: commands.scripts: unknown variant `maybe`, expected `allow` or `refuse`",
            ]
        );
        assert_eq!(
            errors(
                "[commands]\nrename = { CONFIG = \"GET\", FLUSHALL = \"X\", FLUSHDB = \"x\", \"CLIENT|KILL\" = \"\" }\n"
            ),
            [
                "2: commands.rename.CONFIG: GET is already a Redis command",
                "2: commands.rename.FLUSHDB: X is the new name of another command too",
                "2: commands.rename.CLIENT|KILL: only whole commands can be renamed, not subcommands",
            ]
        );
        // Swapping two names is allowed: neither stays under its own name.
        assert_eq!(
            errors("[commands]\nrename = { GET = \"SET\", SET = \"GET\" }\n"),
            Vec::<String>::new()
        );
    }

    #[test]
    fn deny_list_matches_commands_and_subcommands() {
        let deny = DenyList::new(&["FLUSHALL".into(), "CONFIG|SET".into()]);
        assert!(deny.denies(b"FlushAll", Some("flushall")));
        assert!(deny.denies(b"flushall", None));
        assert!(deny.denies(b"config", Some("config|set")));
        assert!(!deny.denies(b"config", Some("config|get")));
        assert!(!deny.denies(b"get", Some("get")));
        let container = DenyList::new(&["CONFIG".into()]);
        assert!(container.denies(b"config", Some("config|get")));
        assert!(!DenyList::default().denies(b"flushall", Some("flushall")));
    }
}
