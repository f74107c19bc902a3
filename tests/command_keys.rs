//! Key extraction checked against a real `redis-server`: for every invocation, the
//! keys cachet finds (with the server's own `COMMAND` reply, and with the built-in
//! Redis 7 table) must be exactly those `COMMAND GETKEYS` reports, in order.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::Bytes;
use cachet::command::{CommandKind, CommandTable, KeyRef};
use redis_protocol::resp2::types::OwnedFrame;
use support::redis::RedisServer;

/// A raw RESP2 connection.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    fn open(server: &RedisServer) -> Conn {
        let stream = TcpStream::connect(server.addr()).expect("connect to redis");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        Conn {
            stream,
            buf: Vec::new(),
        }
    }

    /// Sends one command and returns its reply, raw and decoded.
    fn call(&mut self, args: &[Bytes]) -> (Vec<u8>, OwnedFrame) {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            out.extend_from_slice(arg);
            out.extend_from_slice(b"\r\n");
        }
        self.stream.write_all(&out).expect("write to redis");
        loop {
            if let Some((frame, used)) =
                redis_protocol::resp2::decode::decode(&self.buf).expect("valid RESP2 from redis")
            {
                let raw: Vec<u8> = self.buf.drain(..used).collect();
                return (raw, frame);
            }
            let mut chunk = [0u8; 65536];
            let n = self.stream.read(&mut chunk).expect("read from redis");
            assert!(n > 0, "redis closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// `COMMAND GETKEYS <args>`: the key names, or the error message.
    fn getkeys(&mut self, args: &[Bytes]) -> Result<Vec<String>, String> {
        let mut call = vec![
            Bytes::from_static(b"COMMAND"),
            Bytes::from_static(b"GETKEYS"),
        ];
        call.extend_from_slice(args);
        match self.call(&call).1 {
            OwnedFrame::Array(keys) => Ok(keys
                .into_iter()
                .map(|k| match k {
                    OwnedFrame::BulkString(k) => String::from_utf8_lossy(&k).into_owned(),
                    other => panic!("GETKEYS returned {other:?}"),
                })
                .collect()),
            OwnedFrame::Error(message) => Err(message),
            other => panic!("GETKEYS returned {other:?}"),
        }
    }
}

/// Splits an invocation on spaces; `""` stands for an empty argument.
fn words(line: &str) -> Vec<Bytes> {
    line.split_whitespace()
        .map(|w| match w {
            "\"\"" => Bytes::new(),
            w => Bytes::copy_from_slice(w.as_bytes()),
        })
        .collect()
}

fn show(args: &[Bytes]) -> String {
    args.iter()
        .map(|a| format!("{:?}", String::from_utf8_lossy(a)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The keys `table` finds in `args`, as strings; `None` if the command is unknown.
fn cachet_keys(table: &CommandTable, args: &[Bytes]) -> Option<Vec<String>> {
    let info = table.lookup(args)?;
    let mut out: Vec<KeyRef> = Vec::new();
    info.keys(args, &mut out);
    Some(
        out.iter()
            .map(|k| String::from_utf8_lossy(&args[k.index]).into_owned())
            .collect(),
    )
}

fn live_table(conn: &mut Conn) -> CommandTable {
    let (raw, _) = conn.call(&words("COMMAND"));
    CommandTable::from_command_reply(&raw).expect("live COMMAND reply parses")
}

/// Invocations with keys, one or more per family.
const WITH_KEYS: &[&str] = &[
    // strings
    "SET k v",
    "SET k v NX GET",
    "GET k",
    "GETEX k EX 10",
    "GETDEL k",
    "MSET a 1 b 2 c 3",
    "MSETNX a 1 b 2",
    "MGET a b a",
    "APPEND k v",
    "INCRBY k 2",
    "LCS a b LEN",
    "SETRANGE k 0 v",
    // keyspace
    "DEL k1 k2 k3",
    "UNLINK a b",
    "EXISTS a a b",
    "TOUCH a",
    "RENAME a b",
    "RENAMENX a b",
    "COPY a b DB 1 REPLACE",
    "MOVE k 1",
    "EXPIRE k 10",
    "TYPE k",
    "DUMP k",
    "RESTORE k 0 payload",
    "OBJECT ENCODING k",
    "OBJECT FREQ k",
    "MEMORY USAGE k SAMPLES 5",
    "WATCH a b",
    // hashes
    "HSET h f v f2 v2",
    "HGETALL h",
    "HINCRBY h f 1",
    // lists
    "LPUSH l a b",
    "LMOVE a b LEFT RIGHT",
    "BLMOVE a b LEFT RIGHT 0",
    "BRPOPLPUSH a b 0",
    "BLPOP a b c 0",
    "LMPOP 2 a b LEFT COUNT 2",
    "BLMPOP 0 2 a b RIGHT",
    "LPOS l x",
    // sets
    "SADD s a b",
    "SMOVE src dst m",
    "SINTER a b c",
    "SINTERSTORE d a b",
    "SINTERCARD 2 a b LIMIT 1",
    // sorted sets
    "ZADD z 1 a",
    "ZUNIONSTORE d 2 a b WEIGHTS 1 2",
    "ZINTERSTORE d 1 a",
    "ZDIFFSTORE d 2 a b",
    "ZINTER 2 a b WITHSCORES",
    "ZUNION 3 a b c",
    "ZDIFF 2 a b",
    "ZINTERCARD 2 a b",
    "ZRANGESTORE d s 0 -1",
    "ZMPOP 2 a b MIN",
    "BZMPOP 0 1 a MAX",
    "BZPOPMIN a b 0",
    // streams
    "XADD s * f v",
    "XREAD STREAMS a b 0 0",
    "XREAD COUNT 2 BLOCK 0 STREAMS s $",
    "XREADGROUP GROUP g c STREAMS s >",
    "XREADGROUP GROUP g c COUNT 1 NOACK STREAMS a b > >",
    "XREAD STREAMS streams streams 1 2",
    "XREAD STREAMS a b c d e",
    "XINFO STREAM s FULL",
    "XINFO GROUPS s",
    "XGROUP CREATE s g $",
    "XAUTOCLAIM s g c 0 0",
    // HyperLogLog
    "PFADD h a b",
    "PFCOUNT a b c",
    "PFMERGE d a b",
    // bitmaps
    "BITOP AND d a b",
    "BITOP NOT d a",
    "BITCOUNT k",
    "BITFIELD k GET u8 0 INCRBY u8 0 1",
    "BITFIELD_RO k GET u8 0",
    // geo
    "GEOADD g 0 0 m",
    "GEORADIUS g 0 0 1 km STORE d",
    "GEORADIUS g 0 0 1 km STOREDIST d2 STORE d1",
    "GEORADIUS g 0 0 1 km STORE",
    "GEORADIUSBYMEMBER g m 1 km STORE d",
    "GEORADIUS_RO g 0 0 1 km",
    "GEOSEARCHSTORE d s FROMLONLAT 0 0 BYRADIUS 1 km",
    // scripts and functions
    "EVAL script 2 a b x y",
    "EVALSHA sha 1 a",
    "EVAL_RO script 1 a x",
    "EVALSHA_RO sha 2 a b",
    "FCALL f 2 a b c",
    "FCALL_RO f 1 a",
    "EVAL script 2abc a b",
    // sort
    "SORT k BY w GET o LIMIT 0 1 STORE d",
    "SORT k STORE a STORE b",
    "SORT k STORE get x",
    "SORT k STORE",
    "SORT_RO k BY w",
    // migrate
    "MIGRATE host 6379 k 0 10",
    "MIGRATE host 6379 \"\" 0 10 COPY REPLACE KEYS a b c",
    "MIGRATE host 6379 \"\" 0 10 AUTH2 user pass KEYS a b",
    "MIGRATE host 6379 \"\" 0 10 AUTH keys a",
    "MIGRATE host 6379 \"\" 0 10 KEYS",
    // lenient or narrowed counts
    "ZUNIONSTORE d 2abc a b",
    "ZUNIONSTORE d 4294967298 a b",
];

/// Invocations without keys: GETKEYS errors (or answers an empty array).
const WITHOUT_KEYS: &[&str] = &[
    // GETKEYS needs at least one argument after the command name.
    "PING hello",
    "ECHO hello",
    "PUBLISH ch m",
    "SPUBLISH ch m",
    "SUBSCRIBE ch",
    "INFO server",
    "CONFIG GET maxmemory",
    "FLUSHALL ASYNC",
    "CLIENT SETNAME x",
    "EVAL script 0",
    "EVAL script -1 a",
    "FCALL f 0",
    "ZUNIONSTORE d 0 a",
    "ZUNIONSTORE d 5 a b",
    "LMPOP 3 a LEFT",
    "XREAD COUNT 1 STREAMS a",
    "XREAD COUNT 1 STREAMS",
    "MIGRATE host 6379 k 0 10 KEYS a b",
];

#[test]
fn extracted_keys_match_command_getkeys() {
    let server = RedisServer::start();
    let mut conn = Conn::open(&server);
    let live = live_table(&mut conn);
    let builtin = CommandTable::builtin();
    assert!(live.len() > 200, "live table has {} commands", live.len());

    let mut with_keys = 0;
    for line in WITH_KEYS {
        let args = words(line);
        let expected = conn
            .getkeys(&args)
            .unwrap_or_else(|err| panic!("GETKEYS {line}: {err}"));
        if !expected.is_empty() {
            with_keys += 1;
        }
        for (which, table) in [("live", &live), ("builtin", &builtin)] {
            let found = cachet_keys(table, &args)
                .unwrap_or_else(|| panic!("{which} table does not know {line}"));
            assert_eq!(found, expected, "{which} table, invocation: {line}");
        }
    }
    assert!(with_keys >= 45, "only {with_keys} invocations had keys");

    for line in WITHOUT_KEYS {
        let args = words(line);
        match conn.getkeys(&args) {
            Ok(keys) => assert!(keys.is_empty(), "GETKEYS {line} found {keys:?}"),
            Err(err) => assert!(
                err.contains("Invalid arguments") || err.contains("no key arguments"),
                "GETKEYS {line}: unexpected error {err}"
            ),
        }
        for (which, table) in [("live", &live), ("builtin", &builtin)] {
            let found = cachet_keys(table, &args)
                .unwrap_or_else(|| panic!("{which} table does not know {line}"));
            assert!(
                found.is_empty(),
                "{which} table, invocation: {line}: found {found:?}"
            );
        }
    }
}

/// Small deterministic generator, so a failure reproduces.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const VOCABULARY: &[&str] = &[
    "STREAMS",
    "streams",
    "STORE",
    "storedist",
    "KEYS",
    "AUTH",
    "AUTH2",
    "COPY",
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
    "2abc",
    "01",
    "",
    "a",
    "b",
    "c",
    "k",
];

#[test]
fn random_invocations_match_command_getkeys() {
    let server = RedisServer::start();
    let mut conn = Conn::open(&server);
    let live = live_table(&mut conn);
    let mut infos: Vec<_> = live.iter().cloned().collect();
    infos.sort_by(|a, b| a.name.cmp(&b.name));
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut compared = 0;
    for _ in 0..4000 {
        let info = &infos[rng.below(infos.len())];
        let mut args: Vec<Bytes> = info
            .name
            .split('|')
            .map(|p| Bytes::copy_from_slice(p.as_bytes()))
            .collect();
        for _ in 0..rng.below(10) {
            args.push(Bytes::from_static(
                VOCABULARY[rng.below(VOCABULARY.len())].as_bytes(),
            ));
        }
        let expected = match conn.getkeys(&args) {
            Ok(keys) => keys,
            // Keyless, or getkeys found none: cachet must find none either.
            Err(err) if err.contains("Invalid arguments") || err.contains("no key arguments") => {
                Vec::new()
            }
            // Wrong arity, or a container without a known subcommand: GETKEYS refuses
            // before looking for keys, so there is nothing to compare.
            Err(_) => continue,
        };
        compared += 1;
        let found = cachet_keys(&live, &args).expect("known command");
        assert_eq!(found, expected, "invocation: {}", show(&args));
    }
    assert!(compared > 1000, "only {compared} invocations compared");
}

#[test]
fn live_table_classifies_and_parses_command_info() {
    let server = RedisServer::start();
    let mut conn = Conn::open(&server);
    let live = live_table(&mut conn);
    let setname = live
        .lookup(&words("client setname x"))
        .expect("client setname");
    assert_eq!(setname.kind, CommandKind::ClientSetName);
    assert!(live.lookup(&words("SET k v")).expect("set").is_write());
    assert!(
        live.lookup(&words("BLPOP a 0"))
            .expect("blpop")
            .is_blocking(&words("BLPOP a 0"))
    );

    // COMMAND INFO: the same parser, with a null for a name the server does not know.
    let (raw, _) = conn.call(&words("COMMAND INFO get xread nosuchcommand"));
    let info = CommandTable::from_command_reply(&raw).expect("COMMAND INFO parses");
    assert_eq!(info.len(), 2);
    let args = words("XREAD COUNT 1 STREAMS a b 0 0");
    assert_eq!(
        cachet_keys(&info, &args),
        Some(vec!["a".into(), "b".into()])
    );

    // Merging the builtin into a full Redis 7 table changes no key extraction.
    let merged = live_table(&mut conn).merged_with_builtin();
    assert_eq!(merged.len(), live.len());
    for line in WITH_KEYS {
        let args = words(line);
        assert_eq!(
            cachet_keys(&merged, &args),
            cachet_keys(&live, &args),
            "{line}"
        );
    }
}
