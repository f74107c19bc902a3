//! Reading hand-written replies: Redis 6 shapes, merging, malformed and unusual input.

use super::super::*;
use super::{keys_with_flags, words};

/// A tiny RESP2 writer for hand-made replies.
enum R {
    S(&'static str),
    I(i64),
    A(Vec<R>),
    Nil,
}

fn encode(r: &R, out: &mut Vec<u8>) {
    match r {
        R::S(s) => out.extend_from_slice(format!("${}\r\n{s}\r\n", s.len()).as_bytes()),
        R::I(n) => out.extend_from_slice(format!(":{n}\r\n").as_bytes()),
        R::Nil => out.extend_from_slice(b"$-1\r\n"),
        R::A(items) => {
            out.extend_from_slice(format!("*{}\r\n", items.len()).as_bytes());
            for item in items {
                encode(item, out);
            }
        }
    }
}

fn reply(r: R) -> Vec<u8> {
    let mut out = Vec::new();
    encode(&r, &mut out);
    out
}

/// A Redis 6 style reply: seven fields, no specs, no subcommands.
fn redis6_reply() -> Vec<u8> {
    use R::*;
    let entry = |name, arity, flags: Vec<&'static str>, first, last, step| {
        A(vec![
            S(name),
            I(arity),
            A(flags.into_iter().map(S).collect()),
            I(first),
            I(last),
            I(step),
            A(vec![S("@keyspace")]),
        ])
    };
    reply(A(vec![
        entry("get", 2, vec!["readonly", "fast"], 1, 1, 1),
        entry("mset", -3, vec!["write", "denyoom"], 1, -1, 2),
        entry("client", -2, vec!["admin", "random"], 0, 0, 0),
        entry("object", -2, vec!["readonly"], 2, 2, 1),
        entry("eval", -3, vec!["noscript", "movablekeys"], 0, 0, 0),
        entry("mod.thing", -2, vec!["write", "module"], 1, -1, 1),
        entry("mod.fixed", -2, vec!["readonly", "module"], 1, 3, 1),
        Nil,
    ]))
}

#[test]
fn redis6_replies_parse_and_merge_with_the_builtin_specs() {
    let raw = CommandTable::from_command_reply(&redis6_reply()).unwrap();
    assert_eq!(raw.len(), 7);
    let get = raw.get("get").unwrap();
    assert!(get.key_specs.is_empty());
    assert_eq!(get.legacy_keys, (1, 1, 1));
    // Without specs, the legacy triple still finds keys.
    let k = |t: &CommandTable, line: &str| {
        keys_with_flags(t, &words(line))
            .into_iter()
            .map(|(k, _)| k)
            .collect::<Vec<_>>()
    };
    assert_eq!(k(&raw, "MSET a 1 b 2"), ["a", "b"]);
    assert_eq!(k(&raw, "MSET a 1 b"), ["a", "b"], "as Redis 6 reads it");
    assert_eq!(k(&raw, "mod.fixed a b c"), ["a", "b", "c"]);
    assert!(
        k(&raw, "mod.fixed a b").is_empty(),
        "legacy range is all or nothing"
    );
    assert_eq!(k(&raw, "mod.thing x y"), ["x", "y"]);
    assert_eq!(
        k(&raw, "EVAL s 1 a"),
        ["a"],
        "procedures work without specs"
    );
    assert_eq!(
        raw.lookup(&words("CLIENT SETNAME x")).unwrap().name,
        "client"
    );

    let merged = raw.merged_with_builtin();
    assert_eq!(merged.len(), 7, "builtin-only commands are not added");
    assert!(merged.get("set").is_none());
    let get = merged.get("get").unwrap();
    assert_eq!(get.key_specs.len(), 1);
    assert_eq!(
        get.flags,
        CommandFlags::READONLY | CommandFlags::FAST,
        "upstream flags kept"
    );
    assert_eq!(k(&merged, "MSET a 1 b 2"), ["a", "b"]);
    let setname = merged.lookup(&words("CLIENT SETNAME x")).unwrap();
    assert_eq!(setname.kind, CommandKind::ClientSetName);
    assert_eq!(k(&merged, "OBJECT ENCODING k"), ["k"]);
    assert_eq!(k(&merged, "mod.thing x y"), ["x", "y"]);
}

#[test]
fn malformed_replies_are_errors_that_say_where() {
    use R::*;
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"*2\r\n*1\r\n".to_vec(), "truncated"),
        (b"-ERR unknown command 'COMMAND'\r\n".to_vec(), "error"),
        (b"*0\r\n*0\r\n".to_vec(), "unexpected bytes"),
        (b"%1\r\n".to_vec(), "RESP2"),
        (reply(S("x")), "reply"),
        (reply(A(vec![A(vec![S("get"), I(2)])])), "entry 0"),
        (
            reply(A(vec![A(vec![
                S("get"),
                S("two"),
                A(vec![]),
                I(1),
                I(1),
                I(1),
            ])])),
            "`get` arity",
        ),
        (
            reply(A(vec![A(vec![
                S("get"),
                I(2),
                A(vec![]),
                I(1),
                I(1),
                I(1),
                A(vec![]),
                A(vec![]),
                A(vec![A(vec![S("flags"), A(vec![]), S("begin_search")])]),
            ])])),
            "`get` key spec 0",
        ),
        (
            reply(A(vec![A(vec![
                S("get"),
                I(2),
                A(vec![]),
                I(1),
                I(1),
                I(1),
                A(vec![]),
                A(vec![]),
                A(vec![A(vec![
                    S("flags"),
                    A(vec![]),
                    S("begin_search"),
                    A(vec![S("type"), S("index"), S("spec"), A(vec![])]),
                    S("find_keys"),
                    A(vec![S("type"), S("unknown"), S("spec"), A(vec![])]),
                ])]),
            ])])),
            "spec.index",
        ),
        (
            reply(A(vec![A(vec![
                S("client"),
                I(-2),
                A(vec![]),
                I(0),
                I(0),
                I(0),
                A(vec![]),
                A(vec![]),
                A(vec![]),
                A(vec![A(vec![
                    S("config|get"),
                    I(3),
                    A(vec![]),
                    I(0),
                    I(0),
                    I(0),
                ])]),
            ])])),
            "client|",
        ),
    ];
    for (bytes, needle) in cases {
        match CommandTable::from_command_reply(&bytes) {
            Ok(_) => panic!("{:?} parsed", String::from_utf8_lossy(&bytes)),
            Err(err) => assert!(
                err.to_string().contains(needle),
                "{err} does not mention {needle}"
            ),
        }
    }
}

#[test]
fn unknown_fields_flags_and_types_are_ignored() {
    use R::*;
    let bytes = reply(A(vec![A(vec![
        S("NEWCMD"),
        I(-2),
        A(vec![S("write"), S("brand_new_flag")]),
        I(1),
        I(1),
        I(1),
        A(vec![]),
        A(vec![S("some_tip")]),
        A(vec![A(vec![
            S("notes"),
            S("hello"),
            S("flags"),
            A(vec![S("RW"), S("shiny")]),
            S("begin_search"),
            A(vec![
                S("type"),
                S("regex"),
                S("spec"),
                A(vec![S("re"), S(".*")]),
            ]),
            S("find_keys"),
            A(vec![
                S("type"),
                S("range"),
                S("spec"),
                A(vec![
                    S("lastkey"),
                    I(0),
                    S("keystep"),
                    I(1),
                    S("limit"),
                    I(0),
                ]),
            ]),
            S("extra"),
            I(7),
        ])]),
        A(vec![]),
        S("an eleventh field"),
    ])]));
    let table = CommandTable::from_command_reply(&bytes).unwrap();
    let info = table.get("newcmd").unwrap();
    assert_eq!(info.flags, CommandFlags::WRITE);
    assert_eq!(info.key_specs[0].flags, KeyFlags::RW);
    assert_eq!(info.key_specs[0].begin, BeginSearch::Unknown);
    // An unknown spec and no procedure: no keys, as Redis would say.
    let mut out = Vec::new();
    info.keys(&words("newcmd k"), &mut out);
    assert!(out.is_empty());
}
