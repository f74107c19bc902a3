//! What a client's upstream user must be allowed for cachet to act for it, and the
//! checks that keep cachet from giving a client rights Redis would not
//! (docs/security.md).
//!
//! A client's commands run as its own Redis user. Most reach Redis as sent, and Redis
//! answers for its ACL itself. A write cachet rewrites runs commands the client did not
//! send (`MULTI`, `EVAL`, `PUBLISH` on cachet's channel, cachet's state keys): the user
//! must be allowed those too, or a `MULTI` refused by the ACL would let the write run
//! outside its transaction, without its invalidation. So a user is checked before
//! cachet rewrites for it (the `CAPABILITY` script, run as the user); one that lacks
//! something gets no rewrite: its write is refused with an error that says what is
//! missing, unless Redis would refuse the write itself, in which case Redis's own
//! refusal is the reply. A judged `SET` checks the client's own right to its command
//! inside the script, before doing anything.

use bytes::Bytes;

use super::Engine;
use super::reserved;
use super::scripts::CAPABILITY;
use crate::resp::reply::{elements, string_value};

/// What the `CAPABILITY` script found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    /// The user may run everything cachet adds (or Redis cannot tell).
    Able,
    /// The user may not run these (commands with their key or channel).
    Lacks(Vec<String>),
}

impl Engine {
    /// The `CAPABILITY` script call, as the checked user runs it.
    pub fn capability_command(&self) -> Vec<Bytes> {
        let state = reserved::state_key(&self.prefix, b"x")
            .unwrap_or_else(|| Bytes::copy_from_slice(&self.prefix));
        vec![
            Bytes::from_static(b"EVAL"),
            Bytes::from_static(CAPABILITY.as_bytes()),
            Bytes::from_static(b"1"),
            state,
            self.channel.clone(),
        ]
    }

    /// Reads the `CAPABILITY` reply; `None` when it says nothing (the connection
    /// failed, or an error other than the user's own refusal of `EVAL`).
    pub fn read_capability(&self, reply: &[u8]) -> Option<Checked> {
        if reply.starts_with(b"-NOPERM") {
            // Not even `EVAL`: everything cachet adds is out of reach.
            return Some(Checked::Lacks(vec!["eval".to_owned()]));
        }
        if reply.first() == Some(&b'-') {
            return None;
        }
        let missing: Vec<String> = elements(reply)?
            .iter()
            .filter_map(|e| string_value(e))
            .map(|m| String::from_utf8_lossy(m).into_owned())
            .collect();
        Some(if missing.is_empty() {
            Checked::Able
        } else {
            Checked::Lacks(missing)
        })
    }

    /// The error a client gets for a write cachet cannot make for its user.
    pub fn lacking_reply(&self, user: &[u8], lacks: &str) -> Bytes {
        crate::resp::reply::error(&format!(
            "NOPERM cachet: user '{}' may not run what cachet adds to this write to keep the cache consistent (it may not run: {lacks}); nothing was written. Grant those, or see docs/security.md",
            String::from_utf8_lossy(user)
        ))
    }
}

/// The client's command as the ACL check inside a judged store sees it: every value
/// blanked (the ACL never looks at values; a value of megabytes would travel twice),
/// preceded by the count. `values`: the positions of the values.
pub(super) fn check_args(args: &[Bytes], values: impl Fn(usize) -> bool) -> Vec<Bytes> {
    let mut out = Vec::with_capacity(args.len() + 1);
    out.push(Bytes::from(args.len().to_string()));
    out.extend(args.iter().enumerate().map(
        |(i, a)| {
            if values(i) { Bytes::new() } else { a.clone() }
        },
    ));
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::{ConsistencyConfig, KeyspaceRule};

    #[test]
    fn reads_what_the_check_found() {
        let e = Engine::new(&ConsistencyConfig::default(), &Vec::<KeyspaceRule>::new());
        assert_eq!(e.read_capability(b"*0\r\n"), Some(Checked::Able));
        assert_eq!(
            e.read_capability(b"*2\r\n$5\r\nmulti\r\n$4\r\nexec\r\n"),
            Some(Checked::Lacks(vec!["multi".into(), "exec".into()]))
        );
        assert_eq!(
            e.read_capability(
                b"-NOPERM this user has no permissions to run the 'eval' command\r\n"
            ),
            Some(Checked::Lacks(vec!["eval".into()]))
        );
        assert_eq!(e.read_capability(b"-ERR something else\r\n"), None);
        let cmd = e.capability_command();
        assert_eq!(cmd.first().map(|c| &c[..]), Some(&b"EVAL"[..]));
        assert!(cmd.get(3).unwrap().starts_with(e.prefix()));
    }

    #[test]
    fn check_args_blank_values() {
        let args: Vec<Bytes> = ["SET", "k", "big", "EX", "10"]
            .iter()
            .map(|a| Bytes::from(*a))
            .collect();
        let out = check_args(&args, |i| i == 2);
        let text: Vec<&[u8]> = out.iter().map(|b| &b[..]).collect();
        assert_eq!(text, vec![&b"5"[..], b"SET", b"k", b"", b"EX", b"10"]);
    }
}
