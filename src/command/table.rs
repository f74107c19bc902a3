//! The command table: every command the upstream knows, looked up by the first
//! argument (and the second, for container commands such as `CLIENT`).
//!
//! `lookup` runs on every command, so it allocates nothing for names of ordinary
//! length and hashes with FNV-1a rather than SipHash: the keys are a fixed set of
//! command names read from the upstream, not attacker-chosen, so collision-flooding
//! resistance buys nothing here.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use super::CommandInfo;
use super::parse::{TableError, parse_reply};

/// The raw `COMMAND` reply of Redis 7.0.15: the table used when the upstream's own
/// cannot be read, and the source of key specs for upstreams too old to report them.
const BUILTIN_REPLY: &[u8] = include_bytes!("redis7_command.resp");

/// Longest name (`container|sub` included) lowercased on the stack.
const STACK_NAME: usize = 64;

/// FNV-1a over the bytes written.
struct NameHasher(u64);

impl Default for NameHasher {
    fn default() -> NameHasher {
        NameHasher(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for NameHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    /// The length prefix `Hash` writes for a slice: one step, not eight.
    fn write_usize(&mut self, n: usize) {
        self.0 ^= n as u64;
        self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type NameMap = HashMap<Box<[u8]>, Entry, BuildHasherDefault<NameHasher>>;

#[derive(Clone, Debug)]
struct Entry {
    info: Arc<CommandInfo>,
    /// A container whose second argument names a subcommand.
    has_subcommands: bool,
}

/// Every command of one upstream, by lowercase name; subcommands as `container|sub`.
#[derive(Clone, Debug)]
pub struct CommandTable {
    by_name: NameMap,
    /// Top-level commands (what `COMMAND COUNT` reports).
    top_level: usize,
    /// Longer lookups cannot match, so they are answered without lowercasing.
    longest_name: usize,
}

impl CommandTable {
    /// The table of Redis 7.0.15, parsed from the embedded `COMMAND` reply.
    pub fn builtin() -> CommandTable {
        builtin_ref().clone()
    }

    /// Reads the raw RESP2 bytes of a `COMMAND` (or `COMMAND INFO`) reply.
    pub fn from_command_reply(reply: &[u8]) -> Result<CommandTable, TableError> {
        let mut table = CommandTable {
            by_name: NameMap::default(),
            top_level: 0,
            longest_name: 0,
        };
        for parsed in parse_reply(reply)? {
            let has_subcommands = !parsed.subcommands.is_empty();
            for sub in parsed.subcommands {
                table.insert(sub, false);
            }
            if table.insert(parsed.info, has_subcommands) {
                table.top_level += 1;
            }
        }
        Ok(table)
    }

    /// Fills gaps in an upstream's table from the builtin one: a command without key
    /// specs (Redis 6 reports only first/last/step) takes the builtin's specs, and a
    /// container reported without subcommands (Redis 6 again) gains the builtin's, so
    /// that `CLIENT SETNAME` and `OBJECT ENCODING` resolve as they do on Redis 7.
    /// Commands the upstream does not report at all are not added: it does not know
    /// them.
    pub fn merged_with_builtin(mut self) -> CommandTable {
        let builtin = builtin_ref();
        let mut gained = Vec::new();
        for (name, entry) in &mut self.by_name {
            let Some(known) = builtin.by_name.get(name) else {
                continue;
            };
            if entry.info.key_specs.is_empty() && !known.info.key_specs.is_empty() {
                let mut info = CommandInfo::clone(&entry.info);
                info.key_specs = known.info.key_specs.clone();
                entry.info = Arc::new(info);
            }
            if known.has_subcommands && !entry.has_subcommands {
                entry.has_subcommands = true;
                let mut prefix = name.to_vec();
                prefix.push(b'|');
                gained.extend(
                    builtin
                        .by_name
                        .iter()
                        .filter(|(sub, _)| sub.starts_with(&prefix))
                        .map(|(sub, e)| (sub.clone(), e.clone())),
                );
            }
        }
        for (name, entry) in gained {
            self.longest_name = self.longest_name.max(name.len());
            self.by_name.entry(name).or_insert(entry);
        }
        self
    }

    /// Number of top-level commands.
    pub fn len(&self) -> usize {
        self.top_level
    }

    pub fn is_empty(&self) -> bool {
        self.top_level == 0
    }

    /// The command an invocation runs: case-insensitive, resolving the subcommand of
    /// a container (`CLIENT SETNAME` is `client|setname`) and falling back to the
    /// container itself when the subcommand is missing or unknown.
    pub fn lookup(&self, args: &[Bytes]) -> Option<&Arc<CommandInfo>> {
        let name = args.first()?;
        let entry = self.find_top(name)?;
        if entry.has_subcommands
            && let Some(sub) = args.get(1)
            && let Some(sub) = self.find(&[name, b"|", sub])
        {
            return Some(&sub.info);
        }
        Some(&entry.info)
    }

    /// Whether an invocation names a container with a subcommand it does not have
    /// (`CONFIG FOO`), which Redis answers with `unknown subcommand`.
    pub fn unknown_subcommand(&self, args: &[Bytes]) -> bool {
        let (Some(name), Some(sub)) = (args.first(), args.get(1)) else {
            return false;
        };
        !name.contains(&b'|')
            && self.find(&[name]).is_some_and(|e| e.has_subcommands)
            && self.find(&[name, b"|", sub]).is_none()
    }

    /// The command with this full name (`get`, `client|setname`), case-insensitive.
    pub fn get(&self, name: &str) -> Option<&Arc<CommandInfo>> {
        self.find(&[name.as_bytes()]).map(|e| &e.info)
    }

    /// Every command and subcommand, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<CommandInfo>> {
        self.by_name.values().map(|e| &e.info)
    }

    /// Gives every command the counters `tally_for` returns for its name.
    pub fn set_tallies(&mut self, mut tally_for: impl FnMut(&str) -> super::tally::Tally) {
        for entry in self.by_name.values_mut() {
            let tally = tally_for(&entry.info.name);
            if !Arc::ptr_eq(&tally.0, &entry.info.tally.0) {
                let mut info = CommandInfo::clone(&entry.info);
                info.tally = tally;
                entry.info = Arc::new(info);
            }
        }
    }

    /// Inserts `info`; true if its name was new.
    fn insert(&mut self, info: CommandInfo, has_subcommands: bool) -> bool {
        let name: Box<[u8]> = info.name.as_bytes().into();
        self.longest_name = self.longest_name.max(name.len());
        let entry = Entry {
            info: Arc::new(info),
            has_subcommands,
        };
        self.by_name.insert(name, entry).is_none()
    }

    /// A top-level command by the name a client sent: lowercased on the stack in the
    /// same pass that refuses a `|` (Redis dispatches on top-level names only;
    /// `client|setname` is not one).
    fn find_top(&self, name: &[u8]) -> Option<&Entry> {
        if name.len() > self.longest_name {
            return None;
        }
        let mut stack = [0u8; STACK_NAME];
        let Some(buf) = stack.get_mut(..name.len()) else {
            // Only a module command could have a name this long.
            return if name.contains(&b'|') {
                None
            } else {
                self.find(&[name])
            };
        };
        for (slot, &b) in buf.iter_mut().zip(name) {
            if b == b'|' {
                return None;
            }
            *slot = b.to_ascii_lowercase();
        }
        self.by_name.get(&*buf)
    }

    /// Looks up the concatenation of `parts`, lowercased.
    fn find(&self, parts: &[&[u8]]) -> Option<&Entry> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len > self.longest_name {
            return None;
        }
        let bytes = parts
            .iter()
            .flat_map(|p| p.iter())
            .map(u8::to_ascii_lowercase);
        let mut stack = [0u8; STACK_NAME];
        match stack.get_mut(..len) {
            Some(buf) => {
                for (slot, b) in buf.iter_mut().zip(bytes) {
                    *slot = b;
                }
                self.by_name.get(&*buf)
            }
            // Only a module command could have a name this long.
            None => self.by_name.get(bytes.collect::<Vec<u8>>().as_slice()),
        }
    }
}

fn builtin_ref() -> &'static CommandTable {
    static BUILTIN: OnceLock<CommandTable> = OnceLock::new();
    BUILTIN.get_or_init(|| {
        CommandTable::from_command_reply(BUILTIN_REPLY).unwrap_or_else(|err| {
            // Unreachable in a tested build (a unit test parses the snapshot); an
            // empty table still lets cachet forward everything as keyless writes.
            tracing::error!(%err, "the built-in command table does not parse");
            CommandTable {
                by_name: NameMap::default(),
                top_level: 0,
                longest_name: 0,
            }
        })
    })
}
