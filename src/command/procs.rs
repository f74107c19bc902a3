//! The command-specific key procedures Redis falls back to when key specs cannot
//! answer (`getkeys_proc` in Redis's `src/db.c`), and the C string semantics they rely
//! on.
//!
//! Redis compares arguments with `strcasecmp` and parses counts with `atoi` or
//! `string2ll` (cachet's `resp::request::parse_int`); an argument like `"2abc"` or
//! `"STREAMS\0x"` is read differently by each. A proxy that read them otherwise could disagree with Redis about which
//! arguments are keys, so these helpers copy the C behaviour, odd corners included.

use bytes::Bytes;

use super::CommandInfo;
use super::flags::KeyFlags;
use super::keys::KeyRef;

/// A command-specific key procedure, chosen by command name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Proc {
    /// `genericGetKeys`: a count at `count`, that many keys from `first`, then the
    /// destination at `store` when it is non-zero.
    Generic {
        store: usize,
        count: usize,
        first: usize,
    },
    SortRo,
    Sort,
    Migrate,
    Georadius,
    Xread,
    Set,
    Bitfield,
}

impl Proc {
    /// The procedure Redis 7 registers for the command called `name`, if any.
    pub(crate) fn for_name(name: &str) -> Option<Proc> {
        let generic = |store, count, first| {
            Some(Proc::Generic {
                store,
                count,
                first,
            })
        };
        match name {
            "zunionstore" | "zinterstore" | "zdiffstore" => generic(1, 2, 3),
            "zunion" | "zinter" | "zdiff" | "zintercard" | "sintercard" | "lmpop" | "zmpop" => {
                generic(0, 1, 2)
            }
            "eval" | "evalsha" | "eval_ro" | "evalsha_ro" | "fcall" | "fcall_ro" | "blmpop"
            | "bzmpop" => generic(0, 2, 3),
            "sort_ro" => Some(Proc::SortRo),
            "sort" => Some(Proc::Sort),
            "migrate" => Some(Proc::Migrate),
            "georadius" | "georadiusbymember" => Some(Proc::Georadius),
            "xread" | "xreadgroup" => Some(Proc::Xread),
            "set" => Some(Proc::Set),
            "bitfield" => Some(Proc::Bitfield),
            _ => None,
        }
    }

    /// Appends the keys this procedure finds, in the order Redis reports them.
    ///
    /// Redis leaves the flags of `genericGetKeys`, `georadiusGetKeys` and
    /// `xreadGetKeys` keys empty (those commands only get here when malformed); cachet
    /// gives them the flags of the matching key spec instead, so that a consumer never
    /// mistakes a key for one that is neither read nor written.
    pub(crate) fn run(self, info: &CommandInfo, args: &[Bytes], out: &mut Vec<KeyRef>) {
        let spec_flags = |n: usize| info.key_specs.get(n).map_or(KeyFlags::empty(), |s| s.flags);
        match self {
            Proc::Generic {
                store,
                count,
                first,
            } => {
                let (key_flags, store_flags) = if store == 0 {
                    (spec_flags(0), KeyFlags::empty())
                } else {
                    (spec_flags(1), spec_flags(0))
                };
                generic(args, store, count, first, key_flags, store_flags, out);
            }
            Proc::SortRo => push(args, 1, KeyFlags::RO | KeyFlags::ACCESS, out),
            Proc::Sort => sort(args, out),
            Proc::Migrate => migrate(args, out),
            Proc::Georadius => georadius(args, spec_flags(0), spec_flags(1), out),
            Proc::Xread => xread(args, spec_flags(0), out),
            Proc::Set => {
                let get = args.iter().skip(3).any(|a| c_eq_ignore_case(a, b"get"));
                let flags = if get {
                    KeyFlags::RW | KeyFlags::ACCESS | KeyFlags::UPDATE
                } else {
                    KeyFlags::OW | KeyFlags::UPDATE
                };
                push(args, 1, flags, out);
            }
            Proc::Bitfield => bitfield(args, out),
        }
    }
}

/// Pushes `index` if it is an argument position of this invocation.
fn push(args: &[Bytes], index: usize, flags: KeyFlags, out: &mut Vec<KeyRef>) {
    if index < args.len() {
        out.push(KeyRef { index, flags });
    }
}

fn generic(
    args: &[Bytes],
    store: usize,
    count: usize,
    first: usize,
    key_flags: KeyFlags,
    store_flags: KeyFlags,
    out: &mut Vec<KeyRef>,
) {
    let Some(num) = args.get(count).map(|a| atoi(a)) else {
        return;
    };
    let Ok(num) = usize::try_from(num) else {
        return;
    };
    // Redis's sanity check: no keys when the command is bound to fail on its count.
    if num < 1 || num > args.len().saturating_sub(first) {
        return;
    }
    for index in first..first + num {
        push(args, index, key_flags, out);
    }
    if store != 0 {
        push(args, store, store_flags, out);
    }
}

/// `sortGetKeys`: the sorted key, then the destination of the last `STORE`, skipping
/// the arguments of `LIMIT`, `GET` and `BY` (which name patterns, not keys).
fn sort(args: &[Bytes], out: &mut Vec<KeyRef>) {
    if args.len() < 2 {
        return;
    }
    push(args, 1, KeyFlags::RO | KeyFlags::ACCESS, out);
    let mut store = None;
    let mut i = 2;
    while let Some(arg) = args.get(i) {
        if c_eq_ignore_case(arg, b"limit") {
            i += 2;
        } else if c_eq_ignore_case(arg, b"store") && i + 1 < args.len() {
            // Not skipped: Redis scans the destination as an option name too.
            store = Some(i + 1);
        } else if c_eq_ignore_case(arg, b"get") || c_eq_ignore_case(arg, b"by") {
            i += 1;
        }
        i += 1;
    }
    if let Some(index) = store {
        push(args, index, KeyFlags::OW | KeyFlags::UPDATE, out);
    }
}

/// `migrateGetKeys`: the key at 3, or with an empty key there, everything after
/// `KEYS`, skipping the arguments of `AUTH` and `AUTH2`.
fn migrate(args: &[Bytes], out: &mut Vec<KeyRef>) {
    let argc = args.len();
    let (mut first, mut num) = (3, 1);
    let mut i = 6;
    while let Some(arg) = args.get(i) {
        if c_eq_ignore_case(arg, b"keys") {
            if args.get(3).is_some_and(|key| !key.is_empty()) {
                // A syntax error: MIGRATE itself will say so.
                num = 0;
            } else {
                first = i + 1;
                num = argc - first;
            }
            break;
        }
        if c_eq_ignore_case(arg, b"auth") {
            i += 1;
        } else if c_eq_ignore_case(arg, b"auth2") {
            i += 2;
        }
        i += 1;
    }
    for index in first..first + num {
        push(
            args,
            index,
            KeyFlags::RW | KeyFlags::ACCESS | KeyFlags::DELETE,
            out,
        );
    }
}

/// `georadiusGetKeys`: the key, then the destination of the last `STORE`/`STOREDIST`.
fn georadius(args: &[Bytes], key_flags: KeyFlags, store_flags: KeyFlags, out: &mut Vec<KeyRef>) {
    let mut stored = None;
    let mut i = 5;
    while let Some(arg) = args.get(i) {
        if (c_eq_ignore_case(arg, b"store") || c_eq_ignore_case(arg, b"storedist"))
            && i + 1 < args.len()
        {
            stored = Some(i + 1);
            i += 1;
        }
        i += 1;
    }
    if args.len() < 2 {
        return;
    }
    push(args, 1, key_flags, out);
    if let Some(index) = stored {
        push(args, index, store_flags, out);
    }
}

/// `xreadGetKeys`: the first half of what follows the `STREAMS` option.
fn xread(args: &[Bytes], flags: KeyFlags, out: &mut Vec<KeyRef>) {
    let mut streams = None;
    let mut i = 1;
    while let Some(arg) = args.get(i) {
        if c_eq_ignore_case(arg, b"block") || c_eq_ignore_case(arg, b"count") {
            i += 1;
        } else if c_eq_ignore_case(arg, b"group") {
            i += 2;
        } else if c_eq_ignore_case(arg, b"noack") {
            // No argument to skip.
        } else if c_eq_ignore_case(arg, b"streams") {
            streams = Some(i);
            break;
        } else {
            break;
        }
        i += 1;
    }
    let Some(pos) = streams else {
        return;
    };
    let rest = args.len() - pos - 1;
    if rest == 0 || !rest.is_multiple_of(2) {
        return;
    }
    for index in pos + 1..args.len() - rest / 2 {
        push(args, index, flags, out);
    }
}

/// `bitfieldGetKeys`: read-only unless some operation writes (or the syntax is off).
fn bitfield(args: &[Bytes], out: &mut Vec<KeyRef>) {
    let mut readonly = true;
    let mut i = 2;
    while let Some(arg) = args.get(i) {
        let remaining = args.len() - i - 1;
        if c_eq_ignore_case(arg, b"get") && remaining >= 2 {
            i += 2;
        } else if (c_eq_ignore_case(arg, b"set") || c_eq_ignore_case(arg, b"incrby"))
            && remaining >= 3
        {
            readonly = false;
            break;
        } else if c_eq_ignore_case(arg, b"overflow") && remaining >= 1 {
            i += 1;
        } else {
            // A syntax error: safer to assume a write.
            readonly = false;
            break;
        }
        i += 1;
    }
    let flags = if readonly {
        KeyFlags::RO | KeyFlags::ACCESS
    } else {
        KeyFlags::RW | KeyFlags::ACCESS | KeyFlags::UPDATE
    };
    push(args, 1, flags, out);
}

/// The bytes a C string function sees: everything before the first NUL.
fn c_str(bytes: &[u8]) -> &[u8] {
    bytes.split(|&b| b == 0).next().unwrap_or_default()
}

/// `strcasecmp(arg, word) == 0` as Redis evaluates it on an argument.
pub(crate) fn c_eq_ignore_case(arg: &[u8], word: &[u8]) -> bool {
    c_str(arg).eq_ignore_ascii_case(c_str(word))
}

/// glibc's `atoi`, which is `(int) strtol(s, NULL, 10)`: leading white space, an
/// optional sign, digits up to the first non-digit; saturation at the `long` range,
/// then truncation to `int`.
pub(crate) fn atoi(s: &[u8]) -> i32 {
    let mut rest = c_str(s);
    while let Some((first, tail)) = rest.split_first() {
        if !matches!(first, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r') {
            break;
        }
        rest = tail;
    }
    let negative = match rest.split_first() {
        Some((b'-', tail)) => {
            rest = tail;
            true
        }
        Some((b'+', tail)) => {
            rest = tail;
            false
        }
        _ => false,
    };
    let mut magnitude: u64 = 0;
    for &d in rest.iter().take_while(|d| d.is_ascii_digit()) {
        magnitude = magnitude
            .saturating_mul(10)
            .saturating_add(u64::from(d - b'0'));
    }
    let long = if negative {
        if magnitude >= i64::MIN.unsigned_abs() {
            i64::MIN
        } else {
            0i64.wrapping_sub_unsigned(magnitude)
        }
    } else {
        i64::try_from(magnitude).unwrap_or(i64::MAX)
    };
    // The C cast keeps the low 32 bits.
    long as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atoi_is_lenient_like_c() {
        assert_eq!(atoi(b"2abc"), 2);
        assert_eq!(atoi(b" +2"), 2);
        assert_eq!(atoi(b"\t-7x"), -7);
        assert_eq!(atoi(b"2\x003"), 2);
        assert_eq!(atoi(b"abc"), 0);
        assert_eq!(atoi(b""), 0);
        assert_eq!(atoi(b"4294967298"), 2, "truncated to int");
        assert_eq!(atoi(b"99999999999999999999999"), -1, "LONG_MAX truncated");
        assert_eq!(atoi(b"-99999999999999999999999"), 0, "LONG_MIN truncated");
    }

    #[test]
    fn c_strings_end_at_nul() {
        assert!(c_eq_ignore_case(b"STREAMS\0junk", b"streams"));
        assert!(c_eq_ignore_case(b"Store", b"STORE"));
        assert!(!c_eq_ignore_case(b"stores", b"store"));
        assert!(!c_eq_ignore_case(b"\0store", b"store"));
    }
}
