//! Which commands the proxy must treat specially, decided by name, and which
//! invocations block.
//!
//! The upstream's flags say what a command does to data; they do not say that `SELECT`
//! changes session state or that `SUBSCRIBE` turns the connection into a push stream.
//! Those facts are stable across Redis versions, so they are keyed by lowercase name
//! (`client|setname` for subcommands) rather than read from the reply.

use bytes::Bytes;

use super::flags::CommandFlags;
use super::procs::c_eq_ignore_case;

/// What the proxy must treat specially about a command; anything else is `Plain`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CommandKind {
    /// No special handling: flags and keys say everything.
    Plain,
    Select,
    Hello,
    Auth,
    Quit,
    Reset,
    Ping,
    Echo,
    ClientId,
    ClientSetName,
    ClientGetName,
    ClientSetInfo,
    ClientReply,
    ClientTracking,
    ClientCaching,
    ClientKill,
    ClientList,
    ClientInfo,
    ClientUnblock,
    ClientNoEvict,
    ClientNoTouch,
    ClientPause,
    Multi,
    Exec,
    Discard,
    Watch,
    Unwatch,
    Subscribe,
    PSubscribe,
    SSubscribe,
    Unsubscribe,
    PUnsubscribe,
    SUnsubscribe,
    Publish,
    SPublish,
    Monitor,
    /// `SYNC`, `PSYNC`, `REPLCONF`: a replica's handshake, not proxyable.
    Replication,
    FlushDb,
    FlushAll,
    SwapDb,
    Move,
    Copy,
    Eval,
    EvalSha,
    EvalRo,
    EvalShaRo,
    FCall,
    FCallRo,
    /// `SCRIPT` and every `SCRIPT` subcommand.
    Script,
    /// `FUNCTION` and every `FUNCTION` subcommand.
    Function,
    /// `KEYS`: its reply lists key names.
    Keys,
    /// `SCAN`: its reply lists key names.
    Scan,
    /// `COMMAND` and every `COMMAND` subcommand.
    Command,
}

impl CommandKind {
    /// The kind of the command called `name` (lowercase, `container|sub` for subcommands).
    pub fn classify(name: &str) -> CommandKind {
        use CommandKind::*;
        match name {
            "select" => Select,
            "hello" => Hello,
            "auth" => Auth,
            "quit" => Quit,
            "reset" => Reset,
            "ping" => Ping,
            "echo" => Echo,
            "client|id" => ClientId,
            "client|setname" => ClientSetName,
            "client|getname" => ClientGetName,
            "client|setinfo" => ClientSetInfo,
            "client|reply" => ClientReply,
            "client|tracking" => ClientTracking,
            "client|caching" => ClientCaching,
            "client|kill" => ClientKill,
            "client|list" => ClientList,
            "client|info" => ClientInfo,
            "client|unblock" => ClientUnblock,
            "client|no-evict" => ClientNoEvict,
            "client|no-touch" => ClientNoTouch,
            "client|pause" => ClientPause,
            "multi" => Multi,
            "exec" => Exec,
            "discard" => Discard,
            "watch" => Watch,
            "unwatch" => Unwatch,
            "subscribe" => Subscribe,
            "psubscribe" => PSubscribe,
            "ssubscribe" => SSubscribe,
            "unsubscribe" => Unsubscribe,
            "punsubscribe" => PUnsubscribe,
            "sunsubscribe" => SUnsubscribe,
            "publish" => Publish,
            "spublish" => SPublish,
            "monitor" => Monitor,
            "sync" | "psync" | "replconf" => Replication,
            "flushdb" => FlushDb,
            "flushall" => FlushAll,
            "swapdb" => SwapDb,
            "move" => Move,
            "copy" => Copy,
            "eval" => Eval,
            "evalsha" => EvalSha,
            "eval_ro" => EvalRo,
            "evalsha_ro" => EvalShaRo,
            "fcall" => FCall,
            "fcall_ro" => FCallRo,
            "keys" => Keys,
            "scan" => Scan,
            _ => match name
                .split_once('|')
                .map_or(name, |(container, _)| container)
            {
                "script" => Script,
                "function" => Function,
                "command" => Command,
                _ => Plain,
            },
        }
    }
}

/// Whether this invocation of the command called `name` may block its connection.
pub(crate) fn is_blocking(name: &str, flags: CommandFlags, args: &[Bytes]) -> bool {
    match name {
        "blpop" | "brpop" | "blmove" | "brpoplpush" | "blmpop" | "bzpopmin" | "bzpopmax"
        | "bzmpop" | "wait" | "waitaof" => true,
        "xread" | "xreadgroup" => xread_blocks(args),
        // A command this build does not know (a module's, or a newer Redis's) that the
        // upstream flags as blocking is assumed to block: pinning it needlessly costs a
        // connection, while sending it on a shared one would stall every client there.
        _ => flags.contains(CommandFlags::BLOCKING),
    }
}

/// Whether every invocation of this command is a plain read: no kind of its own, no
/// write, never blocking (by name or flag), not served beside a busy script, and none
/// of the reads cachet treats by name: `RANDOMKEY` (drawn again by a script),
/// `SORT`/`SORT_RO` and `DEBUG` (checked for reserved keys beyond their key
/// positions), `XREAD`/`XREADGROUP` (blocking by argument), `CACHET` (cachet's own).
/// Such a command goes to the shared connection as sent unless the engine treats its
/// keys (the engine's `plan_read`).
pub(crate) fn plain_read(name: &str, flags: CommandFlags, kind: CommandKind) -> bool {
    let special = matches!(
        name,
        "randomkey" | "sort" | "sort_ro" | "xread" | "xreadgroup" | "cachet"
    ) || name == "debug"
        || name.starts_with("debug|");
    kind == CommandKind::Plain
        && !flags
            .intersects(CommandFlags::WRITE | CommandFlags::BLOCKING | CommandFlags::ALLOW_BUSY)
        && !special
        && !is_blocking(name, flags, &[])
}

/// Follows the option parsing of Redis's `xreadCommand` up to `STREAMS`, so that a
/// group, consumer or count that happens to be spelt "block" is not taken for the
/// option.
fn xread_blocks(args: &[Bytes]) -> bool {
    let mut i = 1;
    while let Some(arg) = args.get(i) {
        let more = args.len() - i - 1;
        if c_eq_ignore_case(arg, b"block") && more >= 1 {
            // An unparsable timeout is an error reply, not a block; pinning that
            // command anyway is harmless.
            return true;
        } else if c_eq_ignore_case(arg, b"count") && more >= 1 {
            i += 1;
        } else if c_eq_ignore_case(arg, b"group") && more >= 2 {
            i += 2;
        } else if c_eq_ignore_case(arg, b"noack") {
            // No argument to skip.
        } else {
            // STREAMS ends the options; anything else is a syntax error.
            return false;
        }
        i += 1;
    }
    false
}
