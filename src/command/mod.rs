//! The command table: flags, key positions and special handling of every command.
//!
//! Owns reading the upstream's `COMMAND` reply (or the embedded Redis 7 snapshot) into
//! a [`CommandTable`], resolving an invocation to its [`CommandInfo`], and answering
//! the questions later stages ask of it: is it a write, does it block, which arguments
//! are keys and how are they accessed. Key extraction gives the answer Redis's own
//! `COMMAND GETKEYS` gives, never a guess from `argv[1]`.
//!
//! | file | owns |
//! |---|---|
//! | `parse.rs` | RESP2 reply -> command descriptions, [`TableError`] |
//! | `table.rs` | [`CommandTable`]: builtin, merge, lookup |
//! | `keys.rs` | key specs and spec-driven key extraction |
//! | `procs.rs` | Redis's command-specific key procedures (SORT, MIGRATE, …) |
//! | `kind.rs` | [`CommandKind`] and blocking detection, by name |
//! | `flags.rs` | [`CommandFlags`], [`KeyFlags`] |
//! | `slot.rs` | the Redis Cluster hash slot of a key |
//! | `tally.rs` | a command's reply counters (exposed by `metrics.rs`) |

mod flags;
mod keys;
mod kind;
mod parse;
mod procs;
pub mod slot;
mod table;
pub mod tally;

#[cfg(test)]
mod tests;

use bytes::Bytes;

pub use flags::{CommandFlags, KeyFlags};
pub use keys::{BeginSearch, FindKeys, KeyRef, KeySpec};
pub use kind::CommandKind;
pub use parse::TableError;
pub use table::CommandTable;

/// One command (or subcommand) as the upstream describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandInfo {
    /// Lowercase; subcommands as `container|sub` (`client|setname`).
    pub name: String,
    /// Redis convention, counting the command name (and the subcommand name): exactly
    /// `arity` arguments, or at least `-arity` when negative.
    pub arity: i32,
    pub flags: CommandFlags,
    pub key_specs: Vec<KeySpec>,
    /// First key, last key, step, as reported (what Redis 6 offers instead of specs).
    pub legacy_keys: (i32, i32, i32),
    pub kind: CommandKind,
    /// A plain read in every invocation ([`kind::plain_read`]): what the session may
    /// forward on its shared connection without the general routing.
    pub plain_read: bool,
    /// This command's reply counters (see `metrics.rs`); ignored by equality.
    pub tally: tally::Tally,
}

impl CommandInfo {
    /// Whether `argc` arguments (the command name included) satisfy the arity.
    pub fn arity_ok(&self, argc: usize) -> bool {
        let Ok(argc) = i64::try_from(argc) else {
            return false;
        };
        let arity = i64::from(self.arity);
        if arity >= 0 {
            argc == arity
        } else {
            argc >= -arity
        }
    }

    /// Whether the command may write: the `write` flag, or a script or function call
    /// that is not declared read-only (Redis does not flag `EVAL` as a write because
    /// the script decides; the proxy must assume it does).
    pub fn is_write(&self) -> bool {
        self.flags.contains(CommandFlags::WRITE)
            || matches!(
                self.kind,
                CommandKind::Eval | CommandKind::EvalSha | CommandKind::FCall
            )
    }

    /// Whether this invocation may block its connection: the blocking list and
    /// `WAIT`/`WAITAOF` always, `XREAD`/`XREADGROUP` only with a `BLOCK` option, and any
    /// other command the upstream flags `blocking`.
    pub fn is_blocking(&self, args: &[Bytes]) -> bool {
        kind::is_blocking(&self.name, self.flags, args)
    }

    /// Appends the keys of this invocation exactly as Redis's `COMMAND GETKEYS` would
    /// report them: in its order (spec order, which is argument order except where a
    /// command's own procedure puts a destination last), duplicates kept, each with
    /// its access flags. Never panics, whatever `args` holds; a malformed invocation
    /// yields the keys Redis would find in it, usually none.
    ///
    /// `args` is the whole invocation, command name included. Arity is not checked
    /// here (see [`CommandInfo::arity_ok`]).
    pub fn keys(&self, args: &[Bytes], out: &mut Vec<KeyRef>) {
        keys::extract(self, args, out);
    }
}
