//! Unit tests of the command table against the embedded Redis 7.0.15 snapshot and
//! hand-written replies. `tests/command_keys.rs` checks the same extraction against a
//! live server's `COMMAND GETKEYS`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod keys;
mod replies;

use bytes::Bytes;

use super::*;

pub(super) fn table() -> CommandTable {
    CommandTable::builtin()
}

pub(super) fn args(parts: &[&[u8]]) -> Vec<Bytes> {
    parts.iter().map(|p| Bytes::copy_from_slice(p)).collect()
}

pub(super) fn words(line: &str) -> Vec<Bytes> {
    line.split_whitespace()
        .map(|w| Bytes::copy_from_slice(w.as_bytes()))
        .collect()
}

/// The keys of `args` as strings, in order, with their flags.
pub(super) fn keys_with_flags(table: &CommandTable, args: &[Bytes]) -> Vec<(String, KeyFlags)> {
    let info = table.lookup(args).expect("known command");
    let mut out = Vec::new();
    info.keys(args, &mut out);
    out.iter()
        .map(|k| {
            let arg = args.get(k.index).expect("key index within args");
            (String::from_utf8_lossy(arg).into_owned(), k.flags)
        })
        .collect()
}

pub(super) fn keys(line: &str) -> Vec<String> {
    keys_with_flags(&table(), &words(line))
        .into_iter()
        .map(|(k, _)| k)
        .collect()
}

#[test]
fn builtin_table_parses_completely() {
    let table = table();
    assert_eq!(table.len(), 240, "Redis 7.0.15 reports 240 commands");
    assert!(table.len() > 200);
    assert!(!table.is_empty());
    assert!(table.get("client|setname").is_some());
    assert!(table.get("object|encoding").is_some());
    // Subcommands are in the table but not counted as commands.
    assert!(table.iter().count() > table.len());
}

#[test]
fn flags_arity_and_kinds_of_well_known_commands() {
    let table = table();
    let get = |name: &str| table.get(name).unwrap_or_else(|| panic!("{name} missing"));

    let set = get("set");
    assert_eq!(set.arity, -3);
    assert!(
        set.flags
            .contains(CommandFlags::WRITE | CommandFlags::DENYOOM)
    );
    assert!(set.is_write());
    assert_eq!(set.kind, CommandKind::Plain);
    assert_eq!(set.legacy_keys, (1, 1, 1));

    let getc = get("get");
    assert!(
        getc.flags
            .contains(CommandFlags::READONLY | CommandFlags::FAST)
    );
    assert!(!getc.is_write());
    assert!(getc.arity_ok(2) && !getc.arity_ok(1) && !getc.arity_ok(3));
    assert!(set.arity_ok(3) && set.arity_ok(9) && !set.arity_ok(2));

    assert!(get("blpop").flags.contains(CommandFlags::BLOCKING));
    assert!(get("flushall").flags.contains(CommandFlags::WRITE));
    assert_eq!(get("flushall").kind, CommandKind::FlushAll);
    assert_eq!(get("flushdb").kind, CommandKind::FlushDb);
    assert_eq!(get("select").kind, CommandKind::Select);
    assert!(get("hello").flags.contains(CommandFlags::NO_AUTH));
    assert_eq!(get("hello").kind, CommandKind::Hello);
    assert!(get("subscribe").flags.contains(CommandFlags::PUBSUB));
    assert_eq!(get("subscribe").kind, CommandKind::Subscribe);
    assert_eq!(get("spublish").kind, CommandKind::SPublish);
    assert!(get("save").flags.contains(CommandFlags::NO_MULTI));
    assert_eq!(get("exec").kind, CommandKind::Exec);
    assert!(
        get("debug")
            .flags
            .contains(CommandFlags::ADMIN | CommandFlags::NOSCRIPT)
    );
    assert!(get("shutdown").flags.contains(CommandFlags::ALLOW_BUSY));
    assert!(get("eval").flags.contains(CommandFlags::MOVABLEKEYS));
    assert!(get("eval").flags.contains(CommandFlags::NO_MANDATORY_KEYS));
    assert_eq!(get("psync").kind, CommandKind::Replication);
    assert_eq!(get("replconf").kind, CommandKind::Replication);
    assert_eq!(get("copy").kind, CommandKind::Copy);
    assert_eq!(get("keys").kind, CommandKind::Keys);
    assert_eq!(get("scan").kind, CommandKind::Scan);
    assert_eq!(get("command|getkeys").kind, CommandKind::Command);
    assert_eq!(get("script|load").kind, CommandKind::Script);
    assert_eq!(get("function").kind, CommandKind::Function);
    assert_eq!(get("client|setname").kind, CommandKind::ClientSetName);
    assert_eq!(get("client|no-evict").kind, CommandKind::ClientNoEvict);
    assert_eq!(get("client|help").kind, CommandKind::Plain);
    assert!(get("config|set").flags.contains(CommandFlags::ADMIN));

    // Scripts: Redis does not flag them as writes; the proxy must.
    for (name, write) in [
        ("eval", true),
        ("evalsha", true),
        ("fcall", true),
        ("eval_ro", false),
        ("evalsha_ro", false),
        ("fcall_ro", false),
    ] {
        assert_eq!(get(name).is_write(), write, "{name}");
    }
}

#[test]
fn lookup_is_case_insensitive_and_resolves_subcommands() {
    let table = table();
    let name = |line: &str| table.lookup(&words(line)).map(|i| i.name.clone());
    assert_eq!(name("GeT k").as_deref(), Some("get"));
    assert_eq!(name("CLIENT SETNAME x").as_deref(), Some("client|setname"));
    assert_eq!(
        name("client No-Evict on").as_deref(),
        Some("client|no-evict")
    );
    assert_eq!(
        name("object ENCODING k").as_deref(),
        Some("object|encoding")
    );
    assert_eq!(name("CLIENT bogus").as_deref(), Some("client"));
    assert_eq!(name("CLIENT").as_deref(), Some("client"));
    // A non-container keeps its own entry whatever follows.
    assert_eq!(name("SET help v").as_deref(), Some("set"));
    assert_eq!(name("nosuchcommand"), None);
    assert_eq!(table.lookup(&[]), None);
    // Subcommand names are not commands of their own.
    assert_eq!(name("client|setname x"), None);
    // Longer than any name: no match, no panic.
    let long = "x".repeat(500);
    assert_eq!(name(&long), None);
    assert_eq!(name(&format!("client {long}")).as_deref(), Some("client"));
}
