//! Key extraction from the builtin table: ordinary, hostile and random invocations.

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;

use super::super::procs::Proc;
use super::super::*;
use super::{args, keys, keys_with_flags, table, words};

#[test]
fn keys_of_ordinary_invocations() {
    assert_eq!(keys("GET k"), ["k"]);
    assert_eq!(keys("SET k v"), ["k"]);
    assert_eq!(keys("MSET a 1 b 2 c 3"), ["a", "b", "c"]);
    assert_eq!(keys("DEL k1 k2 k3"), ["k1", "k2", "k3"]);
    assert_eq!(keys("EXISTS a a"), ["a", "a"], "duplicates kept");
    assert_eq!(keys("RENAME a b"), ["a", "b"]);
    assert_eq!(keys("SMOVE src dst m"), ["src", "dst"]);
    assert_eq!(keys("LCS a b"), ["a", "b"]);
    assert_eq!(keys("COPY a b DB 1"), ["a", "b"]);
    assert_eq!(keys("BITOP AND d a b"), ["d", "a", "b"]);
    assert_eq!(keys("EVAL s 2 a b x y"), ["a", "b"]);
    assert_eq!(keys("FCALL f 1 a x"), ["a"]);
    assert!(keys("EVAL s 0").is_empty());
    assert_eq!(keys("ZUNIONSTORE d 2 a b WEIGHTS 1 2"), ["d", "a", "b"]);
    assert_eq!(keys("ZINTER 2 a b"), ["a", "b"]);
    assert_eq!(keys("SINTERCARD 2 a b LIMIT 1"), ["a", "b"]);
    assert_eq!(keys("BLMPOP 0 2 a b LEFT"), ["a", "b"]);
    assert_eq!(keys("XREAD COUNT 1 STREAMS a b 0 0"), ["a", "b"]);
    assert_eq!(keys("XREADGROUP GROUP g c STREAMS s 0"), ["s"]);
    assert_eq!(keys("OBJECT ENCODING k"), ["k"]);
    assert_eq!(keys("MEMORY USAGE k SAMPLES 5"), ["k"]);
    assert_eq!(keys("XINFO STREAM s FULL"), ["s"]);
    assert_eq!(
        keys("GEORADIUS g 0 0 1 km STOREDIST d2 STORE d1"),
        ["g", "d1", "d2"],
        "spec order, not argument order"
    );
    assert_eq!(keys("SORT k BY w GET o LIMIT 0 1 STORE d"), ["k", "d"]);
    assert_eq!(
        keys("SORT k STORE a STORE b"),
        ["k", "b"],
        "last STORE wins"
    );
    assert_eq!(keys("SORT k STORE get x"), ["k", "get"]);
    assert_eq!(keys("SORT_RO k STORE d"), ["k"]);
    assert_eq!(keys("MIGRATE h 1 k 0 10"), ["k"]);
    assert!(
        keys("MIGRATE h 1 k 0 10 KEYS a b").is_empty(),
        "KEYS needs an empty key"
    );
    let migrate = keys_with_flags(
        &table(),
        &args(&[
            b"MIGRATE", b"h", b"1", b"", b"0", b"10", b"REPLACE", b"KEYS", b"a", b"b",
        ]),
    );
    assert_eq!(
        migrate.iter().map(|k| k.0.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    let with_auth = keys_with_flags(
        &table(),
        &args(&[
            b"MIGRATE", b"h", b"1", b"", b"0", b"10", b"AUTH", b"KEYS", b"a",
        ]),
    );
    assert_eq!(with_auth.len(), 1, "AUTH's password is not the KEYS option");
    assert_eq!(with_auth[0].0, "");
    assert_eq!(keys("PUBLISH ch m"), Vec::<String>::new());
    assert_eq!(
        keys("SPUBLISH ch m"),
        Vec::<String>::new(),
        "a NOT_KEY spec"
    );
    assert_eq!(keys("PING"), Vec::<String>::new());
    assert_eq!(keys("CLIENT SETNAME x"), Vec::<String>::new());
}

#[test]
fn key_flags_follow_the_specs_and_procedures() {
    let table = table();
    let flags = |line: &str| {
        keys_with_flags(&table, &words(line))
            .into_iter()
            .map(|(_, f)| f)
            .collect::<Vec<_>>()
    };
    assert_eq!(flags("GET k"), [KeyFlags::RO | KeyFlags::ACCESS]);
    assert_eq!(flags("SET k v"), [KeyFlags::OW | KeyFlags::UPDATE]);
    assert_eq!(
        flags("SET k v GET"),
        [KeyFlags::RW | KeyFlags::ACCESS | KeyFlags::UPDATE]
    );
    assert_eq!(
        flags("BITFIELD k GET u8 0"),
        [KeyFlags::RO | KeyFlags::ACCESS]
    );
    assert_eq!(
        flags("BITFIELD k GET u8 0 SET u8 0 1"),
        [KeyFlags::RW | KeyFlags::ACCESS | KeyFlags::UPDATE]
    );
    let rename = flags("RENAME a b");
    assert!(rename[0].contains(KeyFlags::RW | KeyFlags::DELETE));
    assert!(rename[1].contains(KeyFlags::OW));
    let sort = flags("SORT k STORE d");
    assert_eq!(
        sort,
        [
            KeyFlags::RO | KeyFlags::ACCESS,
            KeyFlags::OW | KeyFlags::UPDATE
        ]
    );
    // ZUNIONSTORE with a count Redis parses leniently: the procedure finds the keys
    // and cachet gives them the specs' flags rather than Redis's empty ones.
    let lenient = flags("ZUNIONSTORE d 2abc a b");
    assert_eq!(lenient.len(), 3);
    assert!(
        lenient[2].contains(KeyFlags::OW),
        "destination last, as Redis puts it"
    );
    assert!(lenient[0].contains(KeyFlags::RO));
}

#[test]
fn hostile_invocations_yield_sensible_keys() {
    // Counts Redis rejects: no keys.
    assert!(keys("EVAL s -1 a").is_empty());
    assert!(keys("EVAL s 5 a b").is_empty());
    assert!(keys("EVAL s x a").is_empty());
    assert!(keys("EVAL s").is_empty(), "count missing");
    assert!(keys("EVAL").is_empty());
    assert!(keys("ZUNIONSTORE d 0 a").is_empty());
    assert!(keys("ZUNIONSTORE d -3 a").is_empty());
    assert!(keys("ZUNIONSTORE d 99999999999999999999999 a").is_empty());
    assert!(keys("LMPOP 3 a LEFT").is_empty());
    // Counts Redis reads with atoi or narrows to int find what Redis finds.
    assert_eq!(keys("ZUNIONSTORE d 2abc a b"), ["a", "b", "d"]);
    assert_eq!(keys("ZUNIONSTORE d 4294967298 a b"), ["d", "a", "b"]);
    assert_eq!(keys("LMPOP 4294967297 a LEFT"), ["a"]);
    // XREAD without STREAMS, or with an odd number of arguments after it.
    assert!(keys("XREAD COUNT 1").is_empty());
    assert!(keys("XREAD STREAMS").is_empty());
    assert!(keys("XREAD STREAMS a").is_empty());
    assert!(keys("XREAD STREAMS a b c").len() == 1);
    assert!(keys("XREADGROUP GROUP g c").is_empty());
    assert_eq!(
        keys("XREAD STREAMS STREAMS STREAMS 1 2"),
        ["STREAMS", "STREAMS"]
    );
    // Truncated invocations.
    assert!(keys("GET").is_empty());
    assert!(keys("MSET").is_empty());
    assert!(keys("RENAME a").is_empty());
    assert!(keys("SORT").is_empty());
    assert_eq!(keys("SORT k STORE"), ["k"]);
    assert!(keys("MIGRATE h").is_empty());
    assert_eq!(keys("GEORADIUS k 0 0 1 km STORE"), ["k"]);
    assert!(keys("OBJECT ENCODING").is_empty());
    assert!(keys("BITFIELD").is_empty());
    // C string semantics: Redis stops at NUL.
    let nul = keys_with_flags(&table(), &args(&[b"XREAD", b"STREAMS\0x", b"a", b"1"]));
    assert_eq!(nul.len(), 1);
}

#[test]
fn blocking_detection() {
    let table = table();
    let blocking = |line: &str| {
        let args = words(line);
        table.lookup(&args).unwrap().is_blocking(&args)
    };
    assert!(blocking("BLPOP a 0"));
    assert!(blocking("BLMOVE a b LEFT RIGHT 0"));
    assert!(blocking("BZMPOP 0 1 z MIN"));
    assert!(blocking("WAIT 1 0"));
    assert!(blocking("XREAD BLOCK 0 STREAMS s $"));
    assert!(blocking("XREAD COUNT 2 block 100 STREAMS s $"));
    assert!(blocking("XREADGROUP GROUP g c BLOCK 0 STREAMS s >"));
    assert!(!blocking("XREAD STREAMS s 0"));
    assert!(!blocking("XREAD STREAMS block 0"), "a stream named block");
    assert!(
        !blocking("XREADGROUP GROUP block c STREAMS s >"),
        "a group named block"
    );
    assert!(
        !blocking("XREAD COUNT block STREAMS s 0"),
        "a count spelt block"
    );
    assert!(!blocking("XREAD BLOCK"));
    assert!(!blocking("GET k"));
    assert!(!blocking("LPOP a"));
}

#[test]
fn incomplete_specs_are_all_covered_by_a_procedure() {
    // Every command whose specs cannot answer alone must have a procedure, or its
    // keys would silently be lost.
    let needs_proc: BTreeSet<String> = table()
        .iter()
        .filter(|info| {
            info.key_specs.iter().any(|s| {
                s.flags
                    .intersects(KeyFlags::INCOMPLETE | KeyFlags::VARIABLE_FLAGS)
                    || s.begin == BeginSearch::Unknown
                    || s.find == FindKeys::Unknown
            })
        })
        .map(|info| info.name.clone())
        .collect();
    let expected: BTreeSet<String> = ["bitfield", "migrate", "set", "sort", "sort_ro"]
        .map(String::from)
        .into();
    assert_eq!(needs_proc, expected);
    for name in &needs_proc {
        assert!(Proc::for_name(name).is_some(), "{name} has no procedure");
    }
    // Every movable-keys command has its Redis procedure too.
    for info in table().iter() {
        if info.flags.contains(CommandFlags::MOVABLEKEYS) {
            assert!(Proc::for_name(&info.name).is_some(), "{}", info.name);
        }
    }
}

#[test]
fn hostile_specs_from_an_odd_upstream_do_not_hang_or_panic() {
    let spec = |begin, find| KeySpec {
        begin,
        find,
        flags: KeyFlags::RW,
    };
    let infos = [
        spec(
            BeginSearch::Index(1),
            FindKeys::Range {
                lastkey: -1,
                keystep: 0,
                limit: 0,
            },
        ),
        spec(
            BeginSearch::Index(-5),
            FindKeys::Range {
                lastkey: 0,
                keystep: 1,
                limit: 0,
            },
        ),
        spec(
            BeginSearch::Index(i32::MAX),
            FindKeys::Range {
                lastkey: i32::MAX,
                keystep: 1,
                limit: 0,
            },
        ),
        spec(
            BeginSearch::Index(1),
            FindKeys::Range {
                lastkey: -1,
                keystep: 1,
                limit: -1,
            },
        ),
        spec(
            BeginSearch::Index(1),
            FindKeys::Keynum {
                keynumidx: i32::MIN,
                firstkey: i32::MAX,
                keystep: 1,
            },
        ),
        spec(
            BeginSearch::Keyword {
                keyword: b"K".to_vec(),
                startfrom: i32::MIN,
            },
            FindKeys::Range {
                lastkey: 0,
                keystep: 1,
                limit: 0,
            },
        ),
    ];
    for key_spec in infos {
        let info = CommandInfo {
            name: "odd".into(),
            arity: -1,
            flags: CommandFlags::empty(),
            key_specs: vec![key_spec],
            legacy_keys: (i32::MAX, i32::MIN, 0),
            kind: CommandKind::Plain,
            plain_read: false,
            tally: Default::default(),
        };
        let mut out = Vec::new();
        info.keys(&words("odd K 1 a b c"), &mut out);
        assert!(out.iter().all(|k| k.index < 6));
    }
}

fn arg_strategy() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        // Option words and counts that steer the procedures.
        prop::sample::select(vec![
            "STREAMS",
            "streams",
            "STORE",
            "storedist",
            "KEYS",
            "AUTH",
            "AUTH2",
            "LIMIT",
            "GET",
            "BY",
            "BLOCK",
            "COUNT",
            "GROUP",
            "NOACK",
            "SET",
            "INCRBY",
            "OVERFLOW",
            "0",
            "1",
            "2",
            "3",
            "-1",
            "-2",
            "99",
            "2147483648",
            "4294967297",
            "",
        ])
        .prop_map(|s| Bytes::from_static(s.as_bytes())),
        prop::collection::vec(any::<u8>(), 0..12).prop_map(Bytes::from),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_args_for_random_commands_never_panic(
        pick in any::<prop::sample::Index>(),
        rest in prop::collection::vec(arg_strategy(), 0..12),
    ) {
        let table = table();
        let mut names: Vec<&Arc<CommandInfo>> = table.iter().collect();
        names.sort_by(|a, b| a.name.cmp(&b.name));
        let info = *pick.get(&names);
        let mut invocation = Vec::new();
        for part in info.name.split('|') {
            invocation.push(Bytes::copy_from_slice(part.as_bytes()));
        }
        invocation.extend(rest);
        let resolved = table.lookup(&invocation);
        prop_assert!(resolved.is_some());
        for candidate in [Some(info), resolved] {
            let candidate = candidate.unwrap();
            let mut out = Vec::new();
            candidate.keys(&invocation, &mut out);
            for key in &out {
                prop_assert!(key.index < invocation.len());
            }
            // The one-fixed-key shortcut finds what the full walk finds.
            let mut walked = Vec::new();
            crate::command::keys::extract_walking(candidate, &invocation, &mut walked);
            prop_assert_eq!(&out, &walked);
            let _ = candidate.is_blocking(&invocation);
            let _ = candidate.arity_ok(invocation.len());
        }
    }
}
