//! Key specifications and key extraction: which arguments of an invocation are keys.
//!
//! This follows Redis 7's `getKeysFromCommandWithSpecs` (in `src/db.c`) step by step,
//! because the answer must be the one Redis itself gives (`COMMAND GETKEYS`): a key
//! the proxy misses is a key whose cache is never invalidated. Specs are tried first;
//! when any of them cannot answer (unknown, incomplete, out of bounds, a bad count) all
//! their keys are dropped and the command's own procedure (`procs.rs`) decides, as in
//! Redis. Commands from an upstream that reports no specs at all (Redis 6, modules)
//! use the legacy first/last/step triple.

use bytes::Bytes;

use super::CommandInfo;
use super::flags::{CommandFlags, KeyFlags};
use super::procs::{Proc, c_eq_ignore_case};
use crate::resp::request::parse_int;

/// One key of an invocation: its position in the arguments and how it is accessed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyRef {
    /// Position in the argument list (0 is the command name).
    pub index: usize,
    pub flags: KeyFlags,
}

/// One key specification from `COMMAND`: where to start looking, and how to find keys
/// from there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySpec {
    pub begin: BeginSearch,
    pub find: FindKeys,
    pub flags: KeyFlags,
}

/// Where the keys of a spec begin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BeginSearch {
    /// At this argument position.
    Index(i32),
    /// Just after `keyword` (uppercase), searched from `startfrom` onwards, or
    /// backwards from the end when `startfrom` is negative.
    Keyword { keyword: Vec<u8>, startfrom: i32 },
    /// Not expressible as a spec: the command's own procedure must decide.
    Unknown,
}

/// How to find the keys once the beginning is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FindKeys {
    /// Keys up to `lastkey` (relative to the beginning; negative counts from the end,
    /// or with `limit` > 0 covers 1/`limit` of the remaining arguments), every
    /// `keystep` arguments.
    Range {
        lastkey: i32,
        keystep: i32,
        limit: i32,
    },
    /// The argument at `keynumidx` (relative to the beginning) holds the number of
    /// keys, which start at `firstkey` (relative to the beginning).
    Keynum {
        keynumidx: i32,
        firstkey: i32,
        keystep: i32,
    },
    /// Not expressible as a spec: the command's own procedure must decide.
    Unknown,
}

/// Appends the keys of `args` for `info`, as `COMMAND GETKEYS` reports them.
pub(crate) fn extract(info: &CommandInfo, args: &[Bytes], out: &mut Vec<KeyRef>) {
    match one_fixed_key(&info.key_specs, args) {
        Some(key) => out.push(key),
        None => extract_walking(info, args, out),
    }
}

/// The key of the most common shape, one key at a fixed position (`GET k`, `SET k v`,
/// `INCR k`), found without the general walk, which would find exactly it; `None` for
/// any other shape, or when the position is past the arguments.
fn one_fixed_key(specs: &[KeySpec], args: &[Bytes]) -> Option<KeyRef> {
    let [
        KeySpec {
            begin: BeginSearch::Index(pos),
            find:
                FindKeys::Range {
                    lastkey: 0,
                    keystep: 1..,
                    ..
                },
            flags,
        },
    ] = specs
    else {
        return None;
    };
    let index = usize::try_from(*pos).ok().filter(|&i| i < args.len())?;
    (!flags.intersects(KeyFlags::NOT_KEY | KeyFlags::VARIABLE_FLAGS | KeyFlags::INCOMPLETE))
        .then_some(KeyRef {
            index,
            flags: *flags,
        })
}

/// [`extract`] by walking every key specification (then the command's own procedure,
/// or the legacy positions, as Redis falls back).
pub(crate) fn extract_walking(info: &CommandInfo, args: &[Bytes], out: &mut Vec<KeyRef>) {
    let specs = &info.key_specs;
    let has_keyspec = specs.iter().any(|s| !s.flags.contains(KeyFlags::NOT_KEY));
    let has_variable_flags = specs
        .iter()
        .any(|s| s.flags.contains(KeyFlags::VARIABLE_FLAGS));
    if has_keyspec && !has_variable_flags {
        let start = out.len();
        if from_specs(specs, args, out).is_some() {
            return;
        }
        out.truncate(start);
    }
    if let Some(procedure) = Proc::for_name(&info.name) {
        procedure.run(info, args, out);
    } else if specs.is_empty() {
        legacy(info, args, out);
    }
}

/// The argument at a signed position, if there is one.
fn arg_at(args: &[Bytes], index: i64) -> Option<&Bytes> {
    usize::try_from(index).ok().and_then(|i| args.get(i))
}

/// `getKeysUsingKeySpecs` without partial results: `None` when any spec is unusable
/// for this invocation (keys already pushed are then the caller's to drop).
fn from_specs(specs: &[KeySpec], args: &[Bytes], out: &mut Vec<KeyRef>) -> Option<()> {
    let argc = i64::try_from(args.len()).ok()?;
    for spec in specs {
        // Channels and the like: COMMAND GETKEYS leaves them out by default.
        if spec.flags.contains(KeyFlags::NOT_KEY) {
            continue;
        }
        let mut first = match &spec.begin {
            BeginSearch::Index(pos) => i64::from(*pos),
            BeginSearch::Keyword { keyword, startfrom } => {
                match find_keyword(args, argc, keyword, *startfrom) {
                    Some(first) => first,
                    // An optional keyword that is absent: no keys from this spec.
                    None => continue,
                }
            }
            BeginSearch::Unknown => return None,
        };
        let (last, step) = match spec.find {
            FindKeys::Range {
                lastkey,
                keystep,
                limit,
            } => {
                let (lastkey, limit) = (i64::from(lastkey), i64::from(limit));
                let last = if lastkey >= 0 {
                    first + lastkey
                } else if limit == 0 {
                    argc + lastkey
                } else {
                    first + ((argc - first) / limit + lastkey)
                };
                (last, keystep)
            }
            FindKeys::Keynum {
                keynumidx,
                firstkey,
                keystep,
            } => {
                let numkeys =
                    arg_at(args, first + i64::from(keynumidx)).and_then(|a| parse_int(a))?;
                if numkeys < 0 {
                    return None;
                }
                first += i64::from(firstkey);
                // Redis narrows the count to an int here, so 2^32 + 2 counts as 2.
                (first + i64::from(numkeys as i32) - 1, keystep)
            }
            FindKeys::Unknown => return None,
        };
        // Out of bounds means a syntax error Redis will report. A step below 1 never
        // comes from Redis (it would loop forever there); refuse it rather than hang.
        if last >= argc || last < first || first >= argc || first < 0 || step < 1 {
            return None;
        }
        let mut i = first;
        while i <= last {
            out.push(KeyRef {
                index: usize::try_from(i).ok()?,
                flags: spec.flags,
            });
            i += i64::from(step);
        }
        if spec.flags.contains(KeyFlags::INCOMPLETE) {
            return None;
        }
    }
    Some(())
}

/// The position just after `keyword`, searched the way Redis does: forwards from a
/// positive `startfrom` up to (not including) the last argument, or backwards from
/// `argc + startfrom` down to (not including) argument 1.
fn find_keyword(args: &[Bytes], argc: i64, keyword: &[u8], startfrom: i32) -> Option<i64> {
    let startfrom = i64::from(startfrom);
    let (start, end) = if startfrom > 0 {
        (startfrom, argc - 1)
    } else {
        (argc + startfrom, 1)
    };
    let mut i = start;
    while i != end {
        if i >= argc || i < 1 {
            return None;
        }
        if c_eq_ignore_case(arg_at(args, i)?, keyword) {
            return Some(i + 1);
        }
        i = if start <= end { i + 1 } else { i - 1 };
    }
    None
}

/// Redis 6's `getKeysUsingCommandTable`: first/last/step, all or nothing. Redis gives
/// these keys no flags; cachet derives them from the command's flags so that a write
/// command's keys read as written.
fn legacy(info: &CommandInfo, args: &[Bytes], out: &mut Vec<KeyRef>) {
    let (first, last, step) = info.legacy_keys;
    let Ok(argc) = i64::try_from(args.len()) else {
        return;
    };
    let (first, last, step) = (i64::from(first), i64::from(last), i64::from(step));
    if first <= 0 || step < 1 {
        return;
    }
    let last = if last < 0 { argc + last } else { last };
    if last >= argc {
        return;
    }
    let flags = if info.flags.contains(CommandFlags::WRITE) {
        KeyFlags::RW
    } else if info.flags.contains(CommandFlags::READONLY) {
        KeyFlags::RO
    } else {
        KeyFlags::empty()
    };
    let mut i = first;
    while i <= last {
        if let Ok(index) = usize::try_from(i) {
            out.push(KeyRef { index, flags });
        }
        i += step;
    }
}
